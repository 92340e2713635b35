"""model.init.clipkit: a new run starts from a clipkit checkpoint's weights (the ones its evaluation
uses), for the towers asked and what comes with them, and nothing else of that run."""

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.errors import CheckpointError, ConfigError
from clipkit.train import checkpoint as ckpt
from clipkit.train.prepare import prepare
from clipkit.train.run import train
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides


@pytest.fixture(scope="module")
def trimodal_run(small_demo, tmp_path_factory):
    """3 steps of the tri-modal demo, keeping a moving average of the weights."""
    run_dir = tmp_path_factory.mktemp("source")
    overrides = ["trainer.max_steps=3", "eval=none", "trainer.ema.decay=0.5", "seed=1"]
    train(compose_config([*demo_overrides(small_demo), *overrides]), run_dir)
    return run_dir


def started(small_demo, tmp_path, *overrides):
    checked, sources = prepare(compose_config([*demo_overrides(small_demo), "eval=none", *overrides]))
    return Trainer(checked, sources, tmp_path)


def matching(model_state, saved, prefix=""):
    return {k for k, v in model_state.items() if k.startswith(prefix) and k in saved and torch.equal(v, saved[k])}


def test_every_tower_and_pair_comes_from_the_runs_average(small_demo, tmp_path, trimodal_run):
    saved = ckpt.read_model_state(ckpt.resolve_checkpoint(str(trimodal_run)))
    raw = ckpt.read_model_state(ckpt.resolve_checkpoint(str(trimodal_run)), ema=False)
    trainer = started(small_demo, tmp_path, f"model.init.clipkit={trimodal_run}")
    state = trainer.core.state_dict()
    assert set(state) == set(saved) and matching(state, saved) == set(state)
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)  # the average, not the raw weights
    assert trainer.progress.step == 0 and not trainer.optimizer.state  # a new run, not a resume


def test_the_towers_asked_alone(small_demo, tmp_path, trimodal_run):
    saved = ckpt.read_model_state(ckpt.resolve_checkpoint(str(trimodal_run)))
    state = started(small_demo, tmp_path, f"model.init.clipkit={trimodal_run}", "model.init.towers=[audio,text]")
    state = state.core.state_dict()
    taken = matching(state, saved)
    assert {k for k in state if k.startswith(("towers.audio.", "towers.text.", "logit_scales.audio_text"))} == taken


def test_a_new_tower_beside_trained_ones(small_demo, tmp_path):
    """From an image+text run to the tri-modal model: image, text and their pair's scale are
    taken; the audio tower and the pairs with audio keep their own start."""
    source = tmp_path / "image_text"
    source.mkdir()
    image_text = [o for o in demo_overrides(small_demo) if not o.startswith("model.towers.audio.")]
    train(compose_config(["experiment=demo_image_text", *image_text, "trainer.max_steps=2", "eval=none"]), source)
    saved = ckpt.read_model_state(ckpt.resolve_checkpoint(str(source)))
    state = started(small_demo, tmp_path / "new", f"model.init.clipkit={source}").core.state_dict()
    assert matching(state, saved) == set(saved)
    assert {k for k in state if k not in saved} == {
        *(k for k in state if k.startswith("towers.audio.")),
        "logit_scales.audio_text",
        "logit_scales.image_audio",
    }
    with pytest.raises(
        CheckpointError, match=r"model.init.towers: audio to take from .*which has the tower\(s\) image, text"
    ):
        started(small_demo, tmp_path / "audio", f"model.init.clipkit={source}", "model.init.towers=[audio]")


def test_a_tower_of_another_shape_or_a_missing_checkpoint_is_one_line(small_demo, tmp_path, trimodal_run):
    with pytest.raises(CheckpointError, match=r"model.init.clipkit: .* has shape \[.*\], this model's \[.*\]"):
        started(small_demo, tmp_path, f"model.init.clipkit={trimodal_run}", "model.towers.image.width=48")
    with pytest.raises(CheckpointError, match=r"has towers\.audio\..*which this model's audio tower has no place for"):
        started(small_demo, tmp_path, f"model.init.clipkit={trimodal_run}", "model.towers.audio.channels=[8]")
    with pytest.raises(CheckpointError, match="model.init.clipkit: checkpoint not found: /nowhere"):
        started(small_demo, tmp_path, "model.init.clipkit=/nowhere")


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["model.init.clipkit=/r", "model.init.open_clip=/m"], "model.init: give one of"),
        (["model.init.clipkit=/r", "model.init.towers=[depth]"], "model.init.towers: depth to take; this model has"),
        (["model.init.open_clip=/m", "model.init.towers=[audio]"], "model.init.towers: an open_clip model fills"),
    ],
)
def test_init_settings_are_checked(overrides, problem):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config(overrides))
    assert str(info.value).startswith(problem)
