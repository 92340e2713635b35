"""Shared fixtures: a small demo data set written once per session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipkit.data.demo import DemoSpec, write_demo

SMALL_DEMO = DemoSpec(
    image_text_samples=1200,
    audio_text_samples=360,
    trimodal_samples=240,
    zeroshot_per_class=4,
    retrieval_images=60,
    sounds_per_class=6,
    retrieval_sounds=40,
    compositions_per_category=16,
    eval_per_shard=40,
)
SMALL_DEMO_SAMPLES = 1200 + 360 + 240

# Image and text towers small enough for a few seconds of CPU training (model=tiny's towers).
TINY_MODEL = [
    "model.embed_dim=32",
    "model.towers.image.width=32",
    "model.towers.image.layers=1",
    "model.towers.image.head_width=16",
    "model.towers.image.image_size=32",
    "model.towers.text.width=32",
    "model.towers.text.layers=1",
    "model.towers.text.heads=2",
    "model.towers.text.context_length=16",
]
# ... and the audio tower of the demo's tri-modal model.
TINY_AUDIO = ["model.towers.audio.channels=[8,16]", "model.towers.audio.n_mels=32"]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("data") / "demo", SMALL_DEMO)


def demo_overrides(root: Path) -> list[str]:
    """The demo experiment (image, text and audio) on the small demo set, with tiny towers."""
    return [
        f"data.demo_root={root}",
        f"data.train.num_samples={SMALL_DEMO_SAMPLES}",
        "data.batch_size=16",
        "data.workers=1",
        "sched.warmup_steps=2",
        *TINY_MODEL,
        *TINY_AUDIO,
    ]


def run_cli(program: str, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an installed console script the way a user would."""
    return run_command([str(Path(sys.executable).parent / program), *args], cwd, timeout)


def torchrun(nproc: int, args: list[str]) -> list[str]:
    """The command line of a real torchrun launch on this machine (gloo on CPU)."""
    return [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *args]


def run_command(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts each worker in a session of its own)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
