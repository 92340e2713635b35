"""loss.cyclic (CyCLIP's cycle consistency) against its formula, in the objective and in the config."""

import pytest
import torch
import torch.nn.functional as F

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.errors import ConfigError
from clipkit.models.multimodal import build_model
from clipkit.models.towers.image import ViTConfig
from clipkit.models.towers.text import TextTransformerConfig
from clipkit.objectives.collectives import LOCAL
from clipkit.objectives.objective import Objective
from clipkit.objectives.terms.base import PairBatch
from clipkit.objectives.terms.cyclic import CyclicLossConfig, CyclicTerm


def unit_rows(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def cyclic(a, b, valid, cross_modal=1.0, in_modal=1.0):
    batch = PairBatch(None, "image_text", "image", "text", a, b, valid, None, {}, {}, True, None)
    return CyclicTerm(CyclicLossConfig(weight=1.0, cross_modal=cross_modal, in_modal=in_modal), LOCAL)(batch)


def by_the_formula(a, b, valid, cross_modal, in_modal):
    """Goel et al.'s sums, pair by pair, over the valid rows only."""
    rows = [i for i in range(len(a)) if valid[i]]
    total = a.new_zeros(())
    for i in rows:
        for j in rows:
            total = total + cross_modal * (a[i] @ b[j] - a[j] @ b[i]) ** 2
            total = total + in_modal * (a[i] @ a[j] - b[i] @ b[j]) ** 2
    return total / max(len(rows), 1)


@pytest.mark.parametrize("cross_modal,in_modal", [(1.0, 1.0), (0.25, 0.0), (0.0, 2.0)])
def test_values_and_gradients_equal_the_formula(cross_modal, in_modal):
    valid = torch.tensor([True, True, False, True, True, False, True])
    got_a, got_b = unit_rows(7, 0).requires_grad_(), unit_rows(7, 1).requires_grad_()
    want_a, want_b = got_a.detach().clone().requires_grad_(), got_b.detach().clone().requires_grad_()
    got = cyclic(got_a, got_b, valid, cross_modal, in_modal)
    want = by_the_formula(want_a, want_b, valid, cross_modal, in_modal)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(got_a.grad, want_a.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_b.grad, want_b.grad, rtol=1e-10, atol=1e-12)
    assert got_a.grad[~valid].abs().max() == 0  # rows without both modalities take no gradient


def test_it_is_zero_only_where_both_modalities_arrange_the_batch_alike():
    a = unit_rows(5, 2)
    v = unit_rows(1, 3)[0]
    reflection = torch.eye(8, dtype=torch.float64) - 2 * torch.outer(v, v)  # orthogonal and symmetric
    everyone = torch.ones(5, dtype=torch.bool)
    # b_i = R a_i keeps every in-modal cosine, and a_i . R a_j = a_j . R a_i as R is symmetric
    assert cyclic(a, a @ reflection, everyone).item() == pytest.approx(0.0, abs=1e-12)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    assert cyclic(a, a @ rotation, everyone, cross_modal=0.0).item() == pytest.approx(0.0, abs=1e-12)
    assert cyclic(a, a @ rotation, everyone, in_modal=0.0).item() > 0.1  # not cross-modally consistent
    assert cyclic(a, unit_rows(5, 4), everyone).item() > 0.1
    assert cyclic(a, unit_rows(5, 4), torch.zeros(5, dtype=torch.bool)).item() == 0.0


def test_it_joins_the_objective_from_the_config_alone():
    cfg = check_config(compose_config(["experiment=demo_image_text", "loss.cyclic.weight=0.25"])).cfg
    assert cfg.loss.cyclic == CyclicLossConfig(weight=0.25)
    torch.manual_seed(0)
    model = build_model(
        16,
        {
            "image": ViTConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
            "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1),
        },
        ["image_text"],
    )
    tokens = torch.randint(1, 49000, (4, 8))
    tokens[:, -1] = 49407
    present = {"image": torch.ones(4, dtype=torch.bool), "text": torch.ones(4, dtype=torch.bool)}
    outputs = model({"image": torch.randn(4, 3, 16, 16), "text": tokens}, present)
    terms = Objective(cfg.loss)(model, outputs, present)
    expected = terms["contrastive/image_text"] + 0.25 * terms["cyclic/image_text"]
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert all(p.grad is not None for p in model.towers.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "override,key",
    [
        ("loss.cyclic.in_modal=-1", "loss.cyclic.in_modal"),
        ("loss.cyclic.cross_modal=-0.5", "loss.cyclic.cross_modal"),
        ("+loss.cyclic.pair_weights.audio_text=1", "loss.cyclic.pair_weights.audio_text"),
    ],
)
def test_bad_settings_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(compose_config(["experiment=demo_image_text", "loss.cyclic.weight=0.25", override]))
