"""Exact resume for real: runs killed with SIGKILL at a random step or inside a checkpoint save
resume to log every loss of the uninterrupted run and end with its weights, bit for bit (fp32,
CPU), with 0 or 2 data workers, in epoch and resampled mode, for the tri-modal demo (three
weighted sources) and the image+text one (with colour jitter and grayscale), with 1 and 2
processes, with evaluations between steps, and with batches ordered by caption length. (One
data worker per process under FSDP: tests/integration/test_distributed.py.)"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipkit.train import checkpoint as ckpt
from tests.conftest import demo_overrides, descendants, run_command, torchrun

pytestmark = [pytest.mark.faults, pytest.mark.slow]
STEPS = 24


def losses(run_dir: Path) -> list[float]:
    return [
        r["loss/total"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss/total" in r
    ]


def command(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "clipkit.cli.train", *args]
    return torchrun(processes, ["-m", "clipkit.cli.train", *args])


def kill_tree(process: subprocess.Popen) -> None:
    """As a lost node: nothing is told. The process first, at once, then what it started."""
    os.kill(process.pid, signal.SIGKILL)
    for pid in descendants(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def killed_run(processes: int, args: list[str], run_dir: Path, moment: str, cwd: Path) -> None:
    """Runs until the kill: at a random step past the first checkpoint, or as soon as a save
    has begun (its staging folder exists) but not finished."""
    kill_after = random.Random(" ".join(args)).randint(6, STEPS - 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command(processes, args), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = run_dir / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if moment == "save":
            if checkpoints.is_dir() and any(checkpoints.glob(".step_*.partial")) and ckpt.find_latest(checkpoints):
                break
        elif (run_dir / "metrics.jsonl").is_file() and len(losses(run_dir)) >= kill_after:
            break
        time.sleep(0.001 if moment == "save" else 0.05)
    kill_tree(process)
    assert process.returncode != 0, "the run finished before it was killed"


@pytest.mark.parametrize(
    "processes, experiment, workers, resampled, moment, bucketed",
    [
        (1, "demo", 2, False, "random", True),
        (1, "demo", 0, True, "random", False),
        (1, "demo", 2, True, "save", False),
        (1, "demo_image_text", 2, False, "save", False),
        (1, "demo_image_text", 0, True, "random", True),
        (2, "demo", 2, False, "random", False),
        (2, "demo", 0, True, "save", False),
    ],
    ids=lambda v: str(v),
)
def test_a_killed_run_resumes_bit_identical(
    tmp_path, small_demo, processes, experiment, workers, resampled, moment, bucketed
):
    """Under DDP in resampled mode with evaluations every 12 steps: they draw nothing from the
    training stream, and the resumed run logs each once. ``bucketed``: batches from pools ordered
    by caption length (data.bucket_pool), a run killed inside a pool."""
    evaluates = processes == 2 and resampled
    overrides = demo_overrides(small_demo)
    if experiment == "demo_image_text":  # image and text towers only, with colour augmentations
        overrides = [o for o in overrides if not o.startswith("model.towers.audio.")]
        overrides += ["data.image.color_jitter_prob=0.8", "data.image.gray_scale_prob=0.2"]
    args = [
        f"experiment={experiment}",
        *overrides,
        "eval.every_n_steps=12" if evaluates else "eval=none",
        f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1",
        f"data.workers={workers}",
        f"data.train.resampled={resampled}",
        f"trainer.ckpt_every_n_steps={1 if moment == 'save' else 4}",
        "trainer.keep_last_k=2",
        # pools of 5 batches of 16: checkpoints every 4 steps fall inside a pool
        *(["data.text_pad_multiple=8", "data.bucket_pool=80"] if bucketed else []),
    ]
    reference = tmp_path / "reference"
    result = run_command(command(processes, [*args, f"hydra.run.dir={reference}"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "run"
    run_args = [*args, f"hydra.run.dir={run_dir}"]
    for _ in range(3):  # a kill meant for inside a save may come just after it: try again
        shutil.rmtree(run_dir, ignore_errors=True)
        killed_run(processes, run_args, run_dir, moment, tmp_path)
        if moment != "save" or any((run_dir / "checkpoints").glob(".step_*.partial")):
            break
    else:
        pytest.fail("three kills missed the save")
    resumed_from = ckpt.checkpoint_step(ckpt.find_latest(run_dir / "checkpoints"))
    assert 0 < resumed_from < STEPS

    result = run_command(command(processes, run_args), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {resumed_from}" in result.stdout
    assert losses(run_dir) == losses(reference)
    expected = ckpt.read_model_state(ckpt.find_latest(reference / "checkpoints"))
    weights = ckpt.read_model_state(ckpt.find_latest(run_dir / "checkpoints"))
    assert all(torch.equal(weights[k], v) for k, v in expected.items())
    if evaluates:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "eval/shapes/acc1" in r] == [12, STEPS]
        assert json.loads((run_dir / "eval" / "shapes.json").read_text())["metrics"]["num_samples"] == 96
