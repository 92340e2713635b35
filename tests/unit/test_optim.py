"""The optimizer's weight-decay groups and the learning-rate schedule."""

import pytest

from clipkit.config.schema import LossConfig, OptimConfig, SchedConfig
from clipkit.train.optim import build_optimizer, lr_factor
from tests.unit.test_objectives import tiny_model


def test_decay_groups_follow_open_clip_train():
    model = tiny_model(LossConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1)).param_groups
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    # Matrices decay, token and positional embeddings included; vectors and scalars do not.
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decayed)
    assert any("token_embedding" in n for n in decayed) and any("positional_embedding" in n for n in decayed)
    assert any(n.endswith("bias") for n in exempt) and any("logit_scale" in n for n in exempt)
    assert any("class_embedding" in n for n in exempt)


def test_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    sched = SchedConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, sched) == pytest.approx(0.1) and lr_factor(9, 110, sched) == 1.0
    assert lr_factor(60, 110, sched) == pytest.approx(0.55)
    assert lr_factor(110, 110, sched) == pytest.approx(0.1)


def _lr_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_layer_decay_rates_per_layer_and_tower():
    from clipkit.config.schema import LayerDecayConfig
    from clipkit.models.multimodal import build_model
    from clipkit.models.towers.image import ResNetConfig, ViTConfig
    from clipkit.models.towers.text import TextTransformerConfig

    model = build_model(
        16,
        {
            "image": ViTConfig(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
            "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=3),
        },
        ["image_text"],
    )
    optimizer = build_optimizer(model, OptimConfig(lr=1.0, layer_decay=LayerDecayConfig(image=0.5, text=0.1)))
    lr = _lr_by_name(model, optimizer)
    image = "towers.image.encoder."
    # ViT of 2 blocks: stem 0.5^3, block 0 0.5^2, block 1 0.5, what follows 1.
    for name, expected in (
        ("conv1.weight", 0.125),
        ("class_embedding", 0.125),
        ("positional_embedding", 0.125),
        ("ln_pre.weight", 0.125),
        ("transformer.resblocks.0.attn.in_proj_weight", 0.25),
        ("transformer.resblocks.1.mlp.c_fc.bias", 0.5),
        ("ln_post.weight", 1.0),
        ("proj", 1.0),
    ):
        assert lr[image + name] == pytest.approx(expected), name
    text = "towers.text.encoder."
    for name, expected in (
        ("token_embedding.weight", 1e-4),
        ("transformer.resblocks.0.ln_1.weight", 1e-3),
        ("transformer.resblocks.2.ln_1.weight", 1e-1),
        ("text_projection", 1.0),
    ):
        assert lr[text + name] == pytest.approx(expected), name
    assert lr["logit_scales.image_text"] == 1.0 and optimizer.param_groups[0]["lr"] == 1.0
    # Weight decay still follows the tensor's kind inside each rate.
    for group in optimizer.param_groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] > 0) for p in group["params"])
    # OpenAI's ResNet: the stem, four stages, then the attention pool.
    resnet = build_model(16, {"image": ResNetConfig(layers=[1, 1, 1, 1], width=8, head_width=8, image_size=64)}, [])
    lr = _lr_by_name(resnet, build_optimizer(resnet, OptimConfig(lr=1.0, layer_decay=LayerDecayConfig(image=0.5))))
    assert [
        lr[f"towers.image.encoder.{n}"]
        for n in ("bn1.weight", "layer1.0.conv1.weight", "layer4.0.conv1.weight", "attnpool.c_proj.weight")
    ] == [0.5**5, 0.5**4, 0.5, 1.0]


def test_schedule_keeps_each_groups_rate():
    from clipkit.config.schema import LayerDecayConfig
    from clipkit.train.optim import build_scheduler

    model = tiny_model(LossConfig())
    optimizer = build_optimizer(model, OptimConfig(lr=1.0, layer_decay=LayerDecayConfig(image=0.5)))
    base = [group["lr"] for group in optimizer.param_groups]
    scheduler = build_scheduler(optimizer, 10, SchedConfig(warmup_steps=4))
    optimizer.step()
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([b * 0.5 for b in base])
