"""eval.text_pad_multiple: prompts and captions encoded without their padding give the same results."""

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.data.text_length import inert_multiple
from clipkit.eval.runner import Evaluator
from clipkit.models.build import build_bundle
from clipkit.train.precision import autocast_factory
from tests.conftest import demo_overrides


def evaluate(small_demo, multiple: int | None, overrides: tuple[str, ...] = ()):
    """The demo's eval sets through a fresh tiny model (seeded), and the token widths it encoded."""
    checked = check_config(
        compose_config([*demo_overrides(small_demo), "eval=demo", "model.towers.text.context_length=77", *overrides])
    )
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    bundle = build_bundle(checked, cpu)
    widths: list[int] = []
    encode = bundle.model.encode

    def spying_encode(modality, inputs):
        if modality == "text":
            widths.append(inputs.shape[-1])
        return encode(modality, inputs)

    bundle.model.encode = spying_encode
    evaluator = Evaluator(
        checked.cfg.eval,
        bundle.eval_loaders(),
        bundle.tokenizer,
        cpu,
        autocast_factory("fp32", cpu),
        text_pad_multiple=inert_multiple(multiple, checked.towers["text"]),
    )
    return evaluator.run(bundle.model, 0, None), evaluator.pairs, widths


def test_cut_prompts_and_captions_give_the_same_metrics_and_embeddings(small_demo):
    full, full_pairs, full_widths = evaluate(small_demo, None)
    cut, cut_pairs, cut_widths = evaluate(small_demo, 8)
    assert set(full_widths) == {77}
    assert max(cut_widths) <= 24 and all(w % 8 == 0 for w in cut_widths)  # the demo's texts are short
    assert cut.keys() == full.keys() and len(cut) == 6
    for name in full:
        assert cut[name] == pytest.approx(full[name], abs=1e-6), name
    for name, (x, y, *_) in full_pairs.items():
        torch.testing.assert_close(cut_pairs[name][0], x, atol=1e-5, rtol=0)
        torch.testing.assert_close(cut_pairs[name][1], y, atol=1e-5, rtol=0)


def test_a_tower_that_sees_its_padding_is_encoded_whole(small_demo):
    """pool_type=last reads the last position, padding or not: the default multiple is not applied."""
    checked = check_config(compose_config([*demo_overrides(small_demo), "model.towers.text.pool_type=last"]))
    assert checked.cfg.eval.text_pad_multiple == 8
    assert inert_multiple(checked.cfg.eval.text_pad_multiple, checked.towers["text"]) is None
    _, _, widths = evaluate(small_demo, 8, ("model.towers.text.pool_type=last",))
    assert set(widths) == {77}
