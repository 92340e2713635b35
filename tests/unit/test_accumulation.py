"""accum_steps=K with batch B must give the gradients of one step on the concatenated K*B batch."""

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.data.pipeline import batches
from clipkit.train.prepare import prepare
from clipkit.train.step import forward_backward
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides

NO_SPEC_AUGMENT = ["model.towers.audio.freq_mask=0", "model.towers.audio.time_mask=0"]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def two_micro_batches(small_demo, tmp_path, *overrides):
    checked, sources = prepare(compose_config([*demo_overrides(small_demo), "trainer.accum_steps=2", *overrides]))
    trainer = Trainer(checked, sources, tmp_path)
    data = batches(trainer.loader(), trainer.stream)
    micro = [next(data), next(data)]
    return trainer, [trainer.model_inputs(b) for b in micro], [trainer.row_masks(b) for b in micro]


@pytest.mark.parametrize(
    "negatives",
    [
        [],
        [
            "loss.contrastive.hard_negatives.source=demo",
            "loss.contrastive.hard_negatives.k=2",
            "loss.contrastive.hardness=1.0",
        ],
    ],
    ids=["plain", "hard_negatives"],
)
def test_feature_cache_accumulation_equals_one_big_batch(small_demo, tmp_path, negatives):
    """Image, text and audio rows mixed, some lacking modalities; no random augmentation in the
    model, so the big batch's forward is comparable bit for bit. Hard-negative captions made by the
    demo's generator in the data workers are columns across both micro-batches."""
    trainer, inputs, present = two_micro_batches(small_demo, tmp_path, *NO_SPEC_AUGMENT, *negatives)
    assert not all(bool(p["audio"].all()) for p in present)  # some rows lack audio
    assert ("text_negatives" in inputs[0]) == bool(negatives)

    trainer.model.zero_grad()
    accumulated_loss = forward_backward(
        trainer.model, trainer.objective, inputs, present, trainer.autocast, trainer.scaler
    )["total"]
    accumulated = grads(trainer.model)

    trainer.model.zero_grad()
    joined = {m: torch.cat([x[m] for x in inputs]) for m in inputs[0]}
    joined_present = {m: torch.cat([p[m] for p in present]) for m in present[0]}
    single_loss = trainer.objective(trainer.model, trainer.model(joined, joined_present), joined_present)["total"]
    single_loss.backward()
    single = grads(trainer.model)

    assert torch.allclose(accumulated_loss, single_loss, atol=1e-6)
    assert accumulated.keys() == single.keys()
    worst = max((accumulated[n] - single[n]).abs().max().item() for n in single)
    assert worst <= 1e-5, worst


def test_gradient_pass_replays_the_random_draws_of_the_cached_pass(small_demo, tmp_path):
    """With SpecAugment on, re-embedding a micro-batch must draw the same masks as caching it."""
    trainer, inputs, present = two_micro_batches(small_demo, tmp_path)
    model = trainer.model
    torch.manual_seed(7)
    with torch.no_grad():
        cached = [model(x, p) for x, p in zip(inputs, present)]
    merged = {m: torch.cat([c[m] for c in cached]) for m in cached[0]}
    all_present = {m: torch.cat([p[m] for p in present]) for m in present[0]}
    expected = trainer.objective(model, merged, all_present)["total"]

    torch.manual_seed(7)
    last_pass = forward_backward(model, trainer.objective, inputs, present, trainer.autocast, trainer.scaler)["total"]
    assert torch.allclose(last_pass, expected, atol=1e-6)
