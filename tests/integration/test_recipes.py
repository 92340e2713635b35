"""Every recipe under the top-level conf/ composes and trains 2 steps through the real clipkit-train,
on tiny shards shaped like its real data (the demo's image-text, audio-text and image+audio
shards), with its towers shrunk and its paths pointed at them. The recipes that start from an open_clip
model start from one written by clipkit-export of the first recipe's run."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

RECIPES = Path(__file__).resolve().parents[2] / "conf"
IMAGE_TEXT = [
    "model.embed_dim=32",
    "model.towers.image.width=32",
    "model.towers.image.layers=1",
    "model.towers.image.head_width=16",
    "model.towers.image.image_size=32",
    "model.towers.image.patch_size=8",
    "model.towers.text.width=32",
    "model.towers.text.heads=2",
    "model.towers.text.layers=1",
    "model.towers.text.context_length=16",
]
AUDIO = [
    "model.towers.audio.width=32",
    "model.towers.audio.layers=1",
    "model.towers.audio.heads=2",
    "model.towers.audio.n_mels=32",
    "model.towers.audio.n_fft=400",
    "model.towers.audio.clip_seconds=1.0",
    "model.towers.audio.freq_mask=4",
    "model.towers.audio.time_mask=5",
]
SMALL_RUN = [
    "trainer.max_steps=2",
    "trainer.epochs=null",
    "trainer.precision=fp32",
    "data.batch_size=8",
    "data.workers=1",
    "sched.warmup_steps=1",
    "trainer.log_every_n_steps=1",
]


def _shards(demo: Path, source: str, count: int) -> str:
    return f"{demo}/train/{source}/demo-{{000000..{count - 1:06d}}}.tar"


def _train(recipe: str, run: Path, overrides):
    result = run_cli(
        "clipkit-train",
        ["--config-dir", str(RECIPES), f"experiment={recipe}", f"hydra.run.dir={run}", *SMALL_RUN, *overrides],
        run.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/total" in r] == [1, 2]
    return result


@pytest.fixture(scope="module")
def open_clip_export(tmp_path_factory, small_demo) -> Path:
    """The laion400m_vit_b32 recipe, shrunk, 2 steps, exported as an open_clip local-dir folder."""
    work = tmp_path_factory.mktemp("recipes")
    _train(
        "laion400m_vit_b32",
        work / "laion",
        [f'data.train.shards="{_shards(small_demo, "image_text", 16)}"', "data.train.num_samples=1200", *IMAGE_TEXT],
    )
    out = work / "export"
    result = run_cli("clipkit-export", [f"checkpoint={work / 'laion'}", "format=open_clip", f"out={out}"], work)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_recipe_is_tested():
    assert {p.stem for p in (RECIPES / "experiment").glob("*.yaml")} == {
        "laion400m_vit_b32",
        "datacomp_medium",
        "finetune_open_clip",
        "lit",
        "bind_audio",
        "clap",
        "distill",
    }


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["datacomp_medium", "finetune_open_clip", "lit", "distill"])
def test_image_text_recipe_runs(recipe, small_demo, open_clip_export, tmp_path):
    paths = {
        "finetune_open_clip": [f"model.init.open_clip={open_clip_export}"],
        "lit": [f"model.init.open_clip={open_clip_export}"],
        "distill": [f"loss.distill.teacher={open_clip_export}"],
    }.get(recipe, [])
    result = _train(
        recipe,
        tmp_path / "run",
        [
            f'data.train.shards="{_shards(small_demo, "image_text", 16)}"',
            "data.train.num_samples=1200",
            *IMAGE_TEXT,
            *paths,
        ],
    )
    if recipe in ("finetune_open_clip", "lit"):
        assert "from the open_clip model" in result.stdout


@pytest.mark.slow
def test_bind_audio_recipe_runs(small_demo, open_clip_export, tmp_path):
    sources = (
        f"data.train.shards=[{{shards:'{_shards(small_demo, 'audio_text', 6)}',weight:1}},"
        f"{{shards:'{_shards(small_demo, 'trimodal', 4)}',weight:1}}]"
    )
    result = _train(
        "bind_audio",
        tmp_path / "run",
        [sources, "data.train.num_samples=600", f"model.init.open_clip={open_clip_export}", *IMAGE_TEXT, *AUDIO],
    )
    assert "initialised the image and text towers from the open_clip model" in result.stdout


@pytest.mark.slow
def test_clap_recipe_runs(small_demo, tmp_path):
    sources = (
        f"data.train.shards=[{{shards:'{_shards(small_demo, 'audio_text', 6)}',weight:1}},"
        f"{{shards:'{_shards(small_demo, 'audio_text', 6)}',weight:1}}]"
    )
    text = [
        "model.embed_dim=32",
        "model.towers.text.width=32",
        "model.towers.text.heads=2",
        "model.towers.text.layers=1",
        "model.towers.text.context_length=16",
    ]
    _train("clap", tmp_path / "run", [sources, "data.train.num_samples=360", *text, *AUDIO])
