"""trainer.ema: the update rule, and a run whose checkpoints, evaluation and readers use the average,
resumed exactly."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import clipkit
from clipkit.config.compose import compose_config
from clipkit.config.schema import EMAConfig
from clipkit.config.validate import check_config
from clipkit.errors import ConfigError
from clipkit.train import checkpoint as ckpt
from clipkit.train.ema import WeightAverage
from clipkit.train.prepare import prepare
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(value)


@pytest.mark.parametrize("warmup", [False, True])
def test_update_rule(warmup):
    model = nn.Linear(3, 2)
    average = WeightAverage(model, EMAConfig(decay=0.9, warmup=warmup))
    _set(model, 1.0)
    average.update(model, step=1)  # the first update copies the weights
    assert all(torch.equal(p, torch.ones_like(p)) for p in average.module.parameters())
    expected = 1.0
    for step, value in ((2, 3.0), (3, -2.0), (4, 5.0)):
        _set(model, value)
        average.update(model, step=step)
        decay = min(0.9, 1 - step ** (-2 / 3)) if warmup else 0.9
        expected = decay * expected + (1 - decay) * value
        for param in average.module.parameters():
            assert torch.allclose(param, torch.full_like(param, expected), atol=1e-6)
    assert not any(p.requires_grad for p in average.module.parameters())


def _trainer(small_demo, run, *overrides):
    checked, sources = prepare(
        compose_config(
            [
                *demo_overrides(small_demo),
                "eval=none",
                "trainer.ema.decay=0.5",
                "trainer.ckpt_every_n_steps=2",
                *overrides,
            ]
        )
    )
    run.mkdir(exist_ok=True)
    return Trainer(checked, sources, run)


def test_a_run_keeps_evaluates_and_resumes_the_average(small_demo, tmp_path):
    whole = _trainer(small_demo, tmp_path / "whole", "trainer.max_steps=4")
    whole.fit()
    folder = ckpt.find_latest(tmp_path / "whole" / "checkpoints")
    average, raw = load_file(str(folder / ckpt.EMA_FILE)), load_file(str(folder / ckpt.MODEL_FILE))
    assert average.keys() == raw.keys()
    assert any(not torch.equal(average[k], raw[k]) for k in raw)
    for key, value in whole.ema.state_dict().items():
        assert torch.equal(average[key], value.cpu())
    # The readers (clipkit-eval, clipkit-export, clipkit.load) get the average.
    loaded = clipkit.load(str(tmp_path / "whole"))
    assert all(torch.equal(v, average[k]) for k, v in loaded.model.state_dict().items())
    # Stopped after step 2 and resumed: the same average at step 4.
    _trainer(small_demo, tmp_path / "split", "trainer.max_steps=2").fit()
    _trainer(small_demo, tmp_path / "split", "trainer.max_steps=4").fit()
    resumed = load_file(str(ckpt.find_latest(tmp_path / "split" / "checkpoints") / ckpt.EMA_FILE))
    assert all(torch.equal(resumed[k], average[k]) for k in average)


def test_bad_decay_is_refused(small_demo):
    with pytest.raises(ConfigError, match="trainer.ema.decay: must lie in"):
        check_config(compose_config([*demo_overrides(small_demo), "trainer.ema.decay=1.0"]))
