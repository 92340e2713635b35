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
