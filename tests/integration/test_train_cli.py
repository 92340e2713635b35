"""The real commands, run as a user runs them: clipkit-train, clipkit-eval, clipkit-data."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from clipkit.config.compose import compose_config
from clipkit.data.shards import resolve_sources
from tests.conftest import TINY_MODEL, demo_overrides, run_cli

CONTRACT_KEYS = {
    "step",
    "samples_seen",
    "loss/total",
    "loss/contrastive/image_text",
    "lr",
    "logit_scale/image_text",
    "samples_per_second",
    "data_time",
}


def read_metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_step=5", "trainer.max_step"),
        ("data.batch_size=lots", "data.batch_size"),
        ('data.train.shards="/nowhere/shard-{0..3}.tar"', "data.train.shards"),
        ("data.train.shards=/nowhere/shard-{0..3}.tar", "data.train.shards"),  # unquoted braces
        ("trainer.parallel=fsdp", "trainer.parallel"),  # without torchrun or srun
        ("model.arch=ViT-B-16-SigLIP", "model.arch"),  # an open_clip architecture clipkit cannot build
        ("model.init.open_clip=/nowhere/open_clip_model.safetensors", "model.init.open_clip"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, small_demo, override, key):
    result = run_cli("clipkit-train", [f"data.demo_root={small_demo}", override], tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipkit-train: error: {key}:"), result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.slow
def test_train_checkpoint_eval_and_reevaluate(tmp_path, small_demo):
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            f"hydra.run.dir={run_dir}",
            "trainer.max_steps=12",
            "trainer.ckpt_every_n_steps=5",
            "trainer.log_every_n_steps=2",
            "eval.every_n_steps=10",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(run_dir)
    steps = [r for r in records if "loss/total" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10, 12]
    assert CONTRACT_KEYS <= steps[-1].keys()
    assert steps[-1]["samples_seen"] == 12 * 16
    evals = [r for r in records if "eval/shapes/acc1" in r]
    assert [r["step"] for r in evals] == [10, 12]
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_0000012"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_0000005", "step_0000010", "step_0000012"]
    for name in ("model.safetensors", "train_state.pt", "config.yaml"):
        assert (checkpoints / "step_0000012" / name).is_file()
    final = {name: json.loads((run_dir / "eval" / f"{name}.json").read_text()) for name in ("shapes", "scenes")}
    assert final["scenes"]["metrics"]["image_retrieval_recall@10"] > 0
    report = (run_dir / "report.md").read_text()
    assert "acc1" in report and "![training curves](curves.png)" in report
    for figure in ("curves.png", "shapes_similarity.png", "shapes_projection.png", "scenes_projection.png"):
        assert (run_dir / figure).stat().st_size > 1000 and f"({figure})" in report

    again = run_cli(
        "clipkit-eval", [f"checkpoint={checkpoints / 'step_0000012'}", f"out={tmp_path / 'again'}"], tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    for name, record in final.items():
        redo = json.loads((tmp_path / "again" / f"{name}.json").read_text())
        assert redo["metrics"] == pytest.approx(record["metrics"], abs=1e-6)


def colour_images(folder: Path) -> None:
    """40 captioned images, as a user's folder holds them."""
    from PIL import Image

    folder.mkdir()
    for i, colour in enumerate(["red", "green", "blue", "yellow"] * 10):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.jpg")
        (folder / f"{i}.txt").write_text(f"a {colour} picture")


@pytest.mark.slow
def test_user_recipe_on_own_shards_via_config_dir(tmp_path, small_demo):
    """A user's own folder of images -> clipkit-data -> an experiment in their own config dir."""
    from PIL import Image

    images = tmp_path / "images"
    colour_images(images)
    made = run_cli("clipkit-data", ["folder", str(images), str(tmp_path / "shards"), "--per-shard", "10"], tmp_path)
    assert made.returncode == 0, made.stderr
    # the override it prints, pasted into a shell, is one Hydra reads (braces need inner quotes)
    [override] = shlex.split(made.stdout.split("train on them with ", 1)[1])
    [source] = resolve_sources(compose_config(["data=webdataset", override]).data.train.shards)
    assert source.urls == [f"{tmp_path}/shards/shard-{i:06d}.tar" for i in range(4)]

    config_dir = tmp_path / "myconf"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "colours.yaml").write_text(f"""# @package _global_
defaults:
  - override /data: webdataset
  - override /eval: none
name: colours
data:
  train:
    shards: {tmp_path}/shards/shard-{{000000..000003}}.tar
  batch_size: 8
  workers: 2
trainer:
  max_steps: 6
  log_every_n_steps: 2
sched:
  warmup_steps: 1
eval:
  datasets:
    shapes:
      root: {small_demo}/eval/shapes
      task: zeroshot_classification
""")
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train",
        ["--config-dir", str(config_dir), "experiment=colours", f"hydra.run.dir={run_dir}", *TINY_MODEL],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir) if "loss/total" in r] == [2, 4, 6]
    assert json.loads((run_dir / "eval" / "shapes.json").read_text())["metrics"]["acc1"] >= 0

    # Eval sets from the user's files (class folders; files with captions), their printed
    # overrides pasted into clipkit-eval, the demo set the recipe names removed with ~.
    for i, colour in enumerate(["red", "green", "blue"] * 2):
        (tmp_path / "classes" / f"{colour}_ish").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "classes" / f"{colour}_ish" / f"{i}.png")
    pasted = []
    for command, src, out in (("eval-classes", "classes", "my_colours"), ("eval-captions", "images", "my_captions")):
        made = run_cli("clipkit-data", [command, str(tmp_path / src), str(tmp_path / out)], tmp_path)
        assert made.returncode == 0, made.stderr
        pasted += shlex.split(made.stdout.split("evaluate on it with ", 1)[1])
    own_eval = [f"checkpoint={run_dir}", f"out={tmp_path / 'own_eval'}", *pasted, "~eval.datasets.shapes"]
    result = run_cli("clipkit-eval", own_eval, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "own_eval").glob("*.json")) == ["my_captions.json", "my_colours.json"]
    classes = json.loads((tmp_path / "own_eval" / "my_colours.json").read_text())["metrics"]
    captions = json.loads((tmp_path / "own_eval" / "my_captions.json").read_text())["metrics"]
    assert classes["num_samples"] == 6 and "acc1" in classes
    assert captions["num_samples"] == 40 and "text_retrieval_recall@1" in captions


@pytest.mark.slow
def test_more_epochs_after_a_finished_run_continue_it_exactly(tmp_path):
    """A finished epochs run given more epochs resumes from its last checkpoint, taken at a pass's
    end, and goes on as one run of that many epochs does, bit for bit (constant schedule)."""
    import torch

    from clipkit.train import checkpoint as ckpt

    colour_images(tmp_path / "images")
    made = run_cli(
        "clipkit-data", ["folder", str(tmp_path / "images"), str(tmp_path / "shards"), "--per-shard", "10"], tmp_path
    )
    assert made.returncode == 0, made.stderr
    args = [
        "~experiment",
        "data=webdataset",
        f'data.train.shards="{tmp_path}/shards/shard-{{000000..000003}}.tar"',
        "eval=none",
        "sched=constant",
        "trainer.max_steps=null",
        "trainer.log_every_n_steps=1",
        "data.batch_size=10",  # a pass: 2 batches from each worker's 2 shards, as long as an epoch
        "data.workers=2",
        *TINY_MODEL,
    ]

    def train(run_dir: Path, epochs: int) -> subprocess.CompletedProcess:
        result = run_cli("clipkit-train", [*args, f"trainer.epochs={epochs}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    train(tmp_path / "once", 3)
    train(tmp_path / "extended", 2)
    assert "at step 8" in train(tmp_path / "extended", 3).stdout
    assert "the run is complete (12 of 12 steps)" in train(tmp_path / "extended", 3).stdout
    steps = [
        [(r["step"], r["loss/total"]) for r in read_metrics(tmp_path / run) if "loss/total" in r]
        for run in ("once", "extended")
    ]
    assert steps[0] == steps[1] and len(steps[0]) == 12
    expected, resumed = (
        ckpt.read_model_state(ckpt.find_latest(tmp_path / run / "checkpoints")) for run in ("once", "extended")
    )
    assert all(torch.equal(resumed[k], v) for k, v in expected.items())


@pytest.mark.slow
def test_audio_text_recipe_on_own_wav_shards_via_config_dir(tmp_path, small_demo):
    """A user's folder of wav + txt -> clipkit-data -> an audio-text model alone, evaluated on
    audio zero-shot and audio<->text retrieval sets in CLIP_benchmark's layout."""
    import numpy as np
    import soundfile

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for i in range(24):
        pitch, freq = (("low", 220.0), ("high", 1200.0))[i % 2]
        t = np.arange(8000) / 16000
        soundfile.write(sounds / f"{i}.wav", (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        (sounds / f"{i}.txt").write_text(f"a {pitch} beep")
    made = run_cli("clipkit-data", ["folder", str(sounds), str(tmp_path / "shards"), "--per-shard", "6"], tmp_path)
    assert made.returncode == 0, made.stderr

    config_dir = tmp_path / "myconf"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "clap.yaml").write_text(f"""# @package _global_
defaults:
  - override /model: audio_text_small
  - override /data: webdataset
  - override /eval: none
name: clap
model:
  embed_dim: 32
  towers:
    audio: {{clip_seconds: 0.5, n_mels: 32, width: 32, layers: 1, heads: 2, freq_mask: 4, time_mask: 5}}
    text: {{context_length: 16, width: 32, heads: 2, layers: 1}}
data:
  train:
    shards: {tmp_path}/shards/shard-{{000000..000003}}.tar
  batch_size: 6
  workers: 1
trainer:
  max_steps: 4
  log_every_n_steps: 2
sched:
  warmup_steps: 1
eval:
  datasets:
    sounds:
      root: {small_demo}/eval/sounds
      task: zeroshot_classification
      modality: audio
    sound_captions:
      root: {small_demo}/eval/sound_captions
      task: retrieval
      modality: audio
""")
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train", ["--config-dir", str(config_dir), "experiment=clap", f"hydra.run.dir={run_dir}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r for r in read_metrics(run_dir) if "loss/total" in r]
    assert [r["step"] for r in steps] == [2, 4] and "loss/contrastive/audio_text" in steps[-1]
    zero_shot = json.loads((run_dir / "eval" / "sounds.json").read_text())["metrics"]
    retrieval = json.loads((run_dir / "eval" / "sound_captions.json").read_text())["metrics"]
    assert zero_shot["num_samples"] == 48 and "acc1" in zero_shot
    assert retrieval["num_samples"] == 40 and "audio_retrieval_recall@10" in retrieval
