"""The sigmoid, uniformity, alignment, cross-uniformity and caption terms against direct formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.config.schema import (
    AlignmentLossConfig,
    CaptionHeadConfig,
    CaptionLossConfig,
    ContrastiveLossConfig,
    CrossUniformityLossConfig,
    LossConfig,
    ModelConfig,
    SigmoidLossConfig,
    UniformityLossConfig,
)
from clipkit.models.build import pair_parameters
from clipkit.models.multimodal import build_model
from clipkit.models.towers.image import ViTConfig
from clipkit.models.towers.text import TextTransformerConfig
from clipkit.objectives.contrastive import clip_loss
from clipkit.objectives.geometry import alignment, cross_uniformity, uniformity
from clipkit.objectives.objective import Objective
from clipkit.objectives.sigmoid import sigmoid_loss


def unit_rows(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_sigmoid_loss_equals_the_siglip_formula():
    a, b = unit_rows(6), unit_rows(6, seed=1)
    t, bias = torch.tensor(10.0), torch.tensor(-10.0)
    expected = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            expected -= math.log(torch.sigmoid(z * (t * a[i] @ b[j] + bias)).item())
    assert sigmoid_loss(a, b, t, bias).item() == pytest.approx(expected / 6, rel=1e-5)


def test_sigmoid_loss_scores_only_rows_with_both_modalities():
    a, b = unit_rows(6), unit_rows(6, seed=1)
    valid = torch.tensor([True, False, True, True, False, True])
    t, bias = torch.tensor(3.0), torch.tensor(-2.0)
    assert sigmoid_loss(a, b, t, bias, valid=valid).item() == pytest.approx(
        sigmoid_loss(a[valid], b[valid], t, bias).item(), rel=1e-6
    )
    assert sigmoid_loss(a, b, t, bias, valid=torch.zeros(6, dtype=torch.bool)).item() == 0.0


def test_a_pair_without_rows_is_zero_yet_reaches_its_scales():
    """DDP requires a gradient for every trained parameter in every step, also where no row of the
    global batch carries the pair."""
    a, b = unit_rows(4).requires_grad_(), unit_rows(4, seed=1).requires_grad_()
    none = torch.zeros(4, dtype=torch.bool)
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    for loss in (clip_loss(a, b, scale, valid=none), sigmoid_loss(a, b, scale, bias, valid=none)):
        assert loss.item() == 0.0
        loss.backward()
    assert all(t.grad is not None and not t.grad.any() for t in (a, b, scale, bias))


def test_uniformity_alignment_and_cross_uniformity_equal_their_definitions():
    x, y = unit_rows(5), unit_rows(5, seed=2)
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    unif = math.log(sum(math.exp(-2 * (x[i] - x[j]).pow(2).sum().item()) for i, j in pairs) / len(pairs))
    xunif = math.log(sum(math.exp(-3 * (x[i] - y[j]).pow(2).sum().item()) for i, j in pairs) / len(pairs))
    align = sum((x[i] - y[i]).norm().item() ** 3 for i in range(5)) / 5
    assert uniformity(x, t=2.0).item() == pytest.approx(unif, rel=1e-5)
    assert cross_uniformity(x, y, t=3.0).item() == pytest.approx(xunif, rel=1e-5)
    assert alignment(x, y, alpha=3.0).item() == pytest.approx(align, rel=1e-5)


def test_geometry_terms_score_only_rows_with_both_modalities():
    x, y = unit_rows(6), unit_rows(6, seed=3)
    valid = torch.tensor([True, True, False, True, False, True])
    assert uniformity(x, valid=valid).item() == pytest.approx(uniformity(x[valid]).item(), rel=1e-6)
    assert alignment(x, y, valid=valid).item() == pytest.approx(alignment(x[valid], y[valid]).item(), rel=1e-6)
    assert cross_uniformity(x, y, valid=valid).item() == pytest.approx(
        cross_uniformity(x[valid], y[valid]).item(), rel=1e-6
    )


def tiny_model(loss: LossConfig, caption: CaptionHeadConfig | None = None):
    torch.manual_seed(0)
    return build_model(
        16,
        {
            "image": ViTConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
            "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1),
        },
        ["image_text"],
        pair_parameters(ModelConfig(), loss),
        caption,
    )


def batch(n: int = 4):
    tokens = torch.randint(1, 49000, (n, 8), generator=torch.Generator().manual_seed(0))
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    tokens[0, 3], tokens[0, 4:] = 49407, 0  # a short caption, then padding
    present = {"image": torch.ones(n, dtype=torch.bool), "text": torch.ones(n, dtype=torch.bool)}
    return {"image": torch.randn(n, 3, 16, 16), "text": tokens}, present


def test_zero_weights_switch_terms_and_their_parameters_off():
    siglip = LossConfig(contrastive=ContrastiveLossConfig(weight=0.0), sigmoid=SigmoidLossConfig(weight=1.0))
    model = tiny_model(siglip)
    assert not len(model.logit_scales) and set(model.sigmoid_scales) == {"image_text"}
    assert model.sigmoid_scale("image_text").item() == pytest.approx(10.0, rel=1e-5)
    assert model.sigmoid_bias("image_text").item() == -10.0
    inputs, present = batch()
    terms = Objective(siglip)(model, model(inputs, present), present)
    assert set(terms) == {"sigmoid/image_text", "total"}
    assert set(tiny_model(LossConfig()).sigmoid_scales) == set()

    everything = LossConfig(
        uniformity=UniformityLossConfig(weight=1.0),
        alignment=AlignmentLossConfig(weight=1.0),
        cross_uniformity=CrossUniformityLossConfig(weight=1.0),
    )
    model = tiny_model(everything)
    terms = Objective(everything)(model, model(inputs, present), present)
    assert set(terms) == {
        "contrastive/image_text",
        "uniformity/image_text",
        "alignment/image_text",
        "cross_uniformity/image_text",
        "total",
    }


def test_temperature_warm_up_scales_the_learned_logit_scale_until_its_last_step():
    inputs, present = batch()
    loss = LossConfig(contrastive=ContrastiveLossConfig(scale_warmup_steps=100, scale_warmup_start=0.5))
    model = tiny_model(loss)
    outputs = model(inputs, present)
    objective = Objective(loss)
    learned = model.logit_scale("image_text")
    for step, factor in ((0, 0.5), (50, 0.75), (100, 1.0), (5000, 1.0)):
        objective.at_step(step)
        expected = clip_loss(outputs["image"], outputs["text"], factor * learned)
        assert objective(model, outputs, present)["contrastive/image_text"].item() == pytest.approx(
            expected.item(), rel=1e-6
        )
    objective.at_step(40)
    objective(model, outputs, present)["total"].backward()
    assert model.logit_scales["image_text"].grad is not None  # the learned scale still learns
    off = Objective(LossConfig())
    off.at_step(0)
    assert off.terms["contrastive"].scale_factor == 1.0


def test_an_anchored_side_gets_no_gradient_from_its_pair():
    inputs, present = batch()
    grads = {}
    for anchors in ({}, {"image_text": "image"}):
        loss = LossConfig(anchors=anchors)
        model = tiny_model(loss)
        Objective(loss)(model, model(inputs, present), present)["total"].backward()
        grads[bool(anchors)] = {name: p.grad for name, p in model.named_parameters()}
    free, anchored = grads[False], grads[True]
    image = [n for n in free if n.startswith("towers.image.")]
    text = [n for n in free if n.startswith("towers.text.") and free[n] is not None]
    assert image and text
    assert all(anchored[n] is None for n in image)
    # The text side trains exactly as without the anchor: the loss and its gradient are unchanged.
    assert all(torch.allclose(anchored[n], free[n]) for n in text)
    assert anchored["logit_scales.image_text"] is not None


def test_caption_loss_is_next_token_cross_entropy_ignoring_padding():
    head = CaptionHeadConfig(sources=["image"], layers=1, heads=2, n_queries=3, pooler_heads=2)
    model = tiny_model(LossConfig(caption=CaptionLossConfig(weight=1.0)), head)
    inputs, present = batch()
    out = model(inputs, present)
    assert out["caption_tokens/image"].tolist() == [3, 7, 7, 7]  # row 0: 2 words + end, no padding
    _, image_tokens = model.towers["image"].forward_with_tokens(inputs["image"])
    _, text_tokens = model.towers["text"].forward_with_tokens(inputs["text"])
    logits = model.caption.logits("image", image_tokens, text_tokens[:, :-1])
    expected = F.cross_entropy(logits.transpose(1, 2), inputs["text"][:, 1:], ignore_index=0, reduction="sum")
    assert out["caption_nll/image"].sum().item() == pytest.approx(expected.item(), rel=1e-5)
    terms = Objective(LossConfig(contrastive=ContrastiveLossConfig(weight=0.0), caption=CaptionLossConfig(weight=1.0)))(
        model, out, present
    )
    assert terms["caption/image"].item() == pytest.approx(expected.item() / 24, rel=1e-5)
