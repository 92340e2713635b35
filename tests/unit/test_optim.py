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


@pytest.mark.parametrize("name", ["timm/lamb", "timm/sgd"])
def test_a_timm_optimizer_gets_the_same_groups(name):
    model = tiny_model(LossConfig())
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.1, momentum=0.8)
    cfg.check("optim")
    ours, timms = build_optimizer(model, OptimConfig(lr=0.01, weight_decay=0.1)), build_optimizer(model, cfg)
    assert type(timms).__name__ == {"timm/lamb": "Lamb", "timm/sgd": "SGD"}[name]
    for group, expected in zip(timms.param_groups, ours.param_groups, strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in expected["params"]]
        assert (group["lr"], group["weight_decay"]) == (expected["lr"], expected["weight_decay"])
    assert timms.defaults.get("momentum", 0.8) == 0.8 and timms.defaults.get("betas", (0.9, 0.98)) == (0.9, 0.98)


def test_optimizer_keywords_reach_the_optimizer_and_a_wrong_one_is_one_line():
    """optim.kwargs (open_clip_train's --opt-kwargs), for timm's optimizers and torch's AdamW."""
    from clipkit.errors import ConfigError

    model = tiny_model(LossConfig())
    lamb = build_optimizer(model, OptimConfig(name="timm/lamb", kwargs={"trust_clip": True, "max_grad_norm": None}))
    assert lamb.defaults["trust_clip"] is True and lamb.defaults["max_grad_norm"] is None
    adamw = build_optimizer(model, OptimConfig(kwargs={"fused": False, "amsgrad": True}))
    assert adamw.defaults["amsgrad"] is True and not adamw.defaults["fused"]
    with pytest.raises(ConfigError, match=r"^optim.kwargs: timm/lamb: .*'nesterov'"):
        build_optimizer(model, OptimConfig(name="timm/lamb", kwargs={"nesterov": True}))
    with pytest.raises(ConfigError, match=r"^optim.kwargs: torch.optim.AdamW: .*'trust_clip'"):
        build_optimizer(model, OptimConfig(kwargs={"trust_clip": True}))


def test_patterns_route_parameters_out_of_weight_decay_and_to_muons_fallback():
    """optim.no_weight_decay and optim.fallback (open_clip_train's --wd-exclude and
    --opt-fallback-list): fnmatch patterns on clipkit's names; one matching nothing is named."""
    from clipkit.errors import ConfigError

    model = tiny_model(LossConfig())
    cfg = OptimConfig(
        name="timm/muon", no_weight_decay=["*positional_embedding"], fallback=["*token_embedding*", "*.proj"]
    )
    cfg.check("optim")
    names = {id(p): n for n, p in model.named_parameters()}
    groups = build_optimizer(model, cfg).param_groups
    fallback = {names[id(p)] for g in groups if g.get("use_fallback") for p in g["params"]}
    assert fallback == {"towers.text.encoder.token_embedding.weight", "towers.image.encoder.proj"}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"towers.image.encoder.positional_embedding", "towers.text.encoder.positional_embedding"} <= exempt
    assert "towers.text.encoder.token_embedding.weight" not in exempt
    with pytest.raises(ConfigError, match=r"^optim.fallback: only Muon-family timm optimizers .*timm/muon"):
        OptimConfig(name="timm/lamb", fallback=["*"]).check("optim")
    with pytest.raises(ConfigError, match=r"^optim.no_weight_decay: '\*pos_embed' matches no parameter"):
        build_optimizer(model, OptimConfig(no_weight_decay=["*pos_embed"]))


def test_an_unknown_optimizer_is_named():
    from clipkit.errors import ConfigError

    for name in ("lamb", "timm/nope"):
        with pytest.raises(ConfigError, match=f"unknown optimizer '{name}': adamw, or timm/NAME"):
            OptimConfig(name=name).check("optim")


def test_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    sched = SchedConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, sched) == pytest.approx(0.1) and lr_factor(9, 110, sched) == 1.0
    assert lr_factor(60, 110, sched) == pytest.approx(0.55)
    assert lr_factor(110, 110, sched) == pytest.approx(0.1)


@pytest.mark.parametrize("power, end", [(1.0, 0.0), (2.0, 0.1)])
def test_const_cooldown_is_open_clip_trains(power, end):
    """Warmup-stable-decay gives open_clip_train's const-cooldown rate at every step."""
    import torch
    from open_clip_train.scheduler import const_lr_cooldown

    total, warmup, cooldown = 200, 20, 50
    sched = SchedConfig(
        name="const_cooldown", warmup_steps=warmup, min_lr_ratio=end, cooldown_steps=cooldown, cooldown_power=power
    )
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    open_clip_rate = const_lr_cooldown(optimizer, 1.0, warmup, total, cooldown, power, end)
    assert [lr_factor(step, total, sched) for step in range(total)] == pytest.approx(
        [open_clip_rate(step) for step in range(total)]
    )
    assert lr_factor(149, total, sched) == 1.0 and lr_factor(150, total, sched) == 1.0 > lr_factor(151, total, sched)


def test_a_cooldown_is_checked_against_the_schedule_and_the_run_length():
    from clipkit.errors import ConfigError

    with pytest.raises(ConfigError, match="only sched=const_cooldown has a cooldown"):
        SchedConfig(name="cosine", cooldown_steps=10).check("sched")
    with pytest.raises(ConfigError, match="needs the length of its cooldown, e.g. sched.cooldown_steps=1000"):
        SchedConfig(name="const_cooldown").check("sched")
    with pytest.raises(ConfigError, match="60 cooldown steps do not fit after 50 warm-up steps in a run of 100"):
        SchedConfig(name="const_cooldown", warmup_steps=50, cooldown_steps=60).check_total("sched", 100)
    SchedConfig(name="const_cooldown", warmup_steps=50, cooldown_steps=50).check_total("sched", 100)
    SchedConfig(warmup_steps=25).check_total("sched", 2)  # no cooldown: a warm-up longer than the run is allowed


@pytest.mark.parametrize("sched", [SchedConfig(), SchedConfig(name="const_cooldown", cooldown_steps=30)])
def test_a_resumed_schedule_takes_the_new_run_length_from_its_first_step(sched):
    import torch

    from clipkit.train.optim import build_scheduler, reapply_schedule

    def optimizer_and_scheduler(total_steps: int):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        return optimizer, build_scheduler(optimizer, total_steps, sched)

    optimizer, scheduler = optimizer_and_scheduler(200)
    for _ in range(180):
        optimizer.step()
        scheduler.step()
    resumed, resumed_scheduler = optimizer_and_scheduler(400)  # trainer.max_steps raised on resume
    resumed.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.5 * lr_factor(180, 200, sched))  # the old run's
    reapply_schedule(resumed_scheduler)
    assert (
        resumed.param_groups[0]["lr"]
        == pytest.approx(0.5 * lr_factor(180, 400, sched))
        != pytest.approx(0.5 * lr_factor(180, 200, sched))
    )
    assert resumed_scheduler.get_last_lr() == [resumed.param_groups[0]["lr"]]
    resumed.step()
    resumed_scheduler.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.5 * lr_factor(181, 400, sched))


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


def test_an_optimizer_that_cannot_step_sharded_parameters_is_one_line():
    from clipkit.errors import ConfigError
    from clipkit.train.optim import optimizer_errors

    mixed = "aten.lerp_.Scalar got mixed torch.Tensor and DTensor, need to convert all torch.Tensor to DTensor"
    with pytest.raises(ConfigError, match="timm/adafactor cannot update FSDP's sharded parameters"):
        with optimizer_errors("timm/adafactor"):
            raise RuntimeError(mixed)
    with pytest.raises(RuntimeError, match="something else"):
        with optimizer_errors("timm/adafactor"):
            raise RuntimeError("something else")
