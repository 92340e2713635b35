"""accum_steps=K with batch B must give the gradients of one step on the concatenated K*B batch."""
import torch

from clipkit.cli.prepare import prepare
from clipkit.config.compose import compose_config
from clipkit.data.pipeline import batches
from clipkit.train.step import forward_backward
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_feature_cache_accumulation_equals_one_big_batch(small_demo, tmp_path):
    checked, sources = prepare(compose_config(demo_overrides(small_demo) + ["trainer.accum_steps=2"]))
    trainer = Trainer(checked, sources, tmp_path)
    data = batches(trainer._loader, trainer.stream)
    micro = [next(data), next(data)]
    inputs = [trainer._inputs(b) for b in micro]
    present = [trainer._present(b) for b in micro]

    trainer.model.zero_grad()
    accumulated_loss = forward_backward(trainer.model, trainer.core, trainer.objective, inputs, present,
                                        trainer.autocast, trainer.scaler)["total"]
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
