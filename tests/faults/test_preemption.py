"""Preemption for real: SIGTERM, SIGUSR1 and SIGINT sent to running trainings save a checkpoint at
the step reached, exit with status 75, leave no process behind, and the next run resumes from it;
processes torchrun started die with it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipkit.train.preemption import EXIT_PREEMPTED
from tests.conftest import demo_overrides, descendants, run_cli

LAUNCH_TORCHRUN = Path(__file__).resolve().parents[2] / "launch" / "torchrun.sh"

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def logged_steps(run_dir: Path) -> list[int]:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    """In a session of its own, as a job under a scheduler: every process it starts is in it. Its
    output goes to ``cwd/output.txt`` (read by :func:`finish`)."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    with open(cwd / "output.txt", "w") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT
        )


def finish(process: subprocess.Popen, cwd: Path, timeout: float = 90) -> str:
    process.wait(timeout=timeout)
    return (cwd / "output.txt").read_text()


def wait_for_steps(process: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while len(logged_steps(run_dir)) < steps:
        assert process.poll() is None, "training ended before it was signalled"
        assert time.time() < deadline, "training did not start"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def train_args(demo: Path, run_dir: Path, max_steps: int) -> list[str]:
    # One data worker: the signal reaches it too (the whole session is signalled).
    return [
        *demo_overrides(demo),
        f"hydra.run.dir={run_dir}",
        "eval=none",
        f"trainer.max_steps={max_steps}",
        "trainer.log_every_n_steps=1",
        "trainer.ckpt_every_n_steps=1000",
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_saves_the_step_reached_and_the_next_run_resumes_there(tmp_path, small_demo, signum):
    run_dir = tmp_path / "run"
    process = start(
        [str(Path(sys.executable).parent / "clipkit-train"), *train_args(small_demo, run_dir, 2000)], tmp_path
    )
    wait_for_steps(process, run_dir, 3)
    started = descendants(process.pid)
    assert started  # the data worker
    os.killpg(process.pid, signum)  # every process of the job, as SLURM and a terminal do
    sent = time.time()
    output = finish(process, tmp_path)
    assert process.returncode == EXIT_PREEMPTED, output[-3000:]
    assert time.time() - sent < 20, "took longer than a step, a save and the exit"
    reached = logged_steps(run_dir)[-1]
    assert 3 <= reached < 2000
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{reached:07d}"
    assert f"stopped by {signum.name} after step {reached}; saved" in output
    assert "Traceback" not in output
    wait_until_gone(started)

    if signum == signal.SIGTERM:  # the next run (resume=auto, the default) continues from there
        resumed = run_cli("clipkit-train", train_args(small_demo, run_dir, reached + 2), tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {run_dir / 'checkpoints' / f'step_{reached:07d}'} at step {reached}" in resumed.stdout
        assert logged_steps(run_dir) == list(range(1, reached + 3))


def start_torchrun(tmp_path: Path, demo: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """``launch/torchrun.sh`` with 2 processes, once it has logged 3 steps; the processes below it."""
    run_dir = tmp_path / "run"
    process = start(["bash", str(LAUNCH_TORCHRUN), "--nproc", "2", *train_args(demo, run_dir, 2000)], tmp_path)
    wait_for_steps(process, run_dir, 3)
    return process, run_dir, descendants(process.pid)


def test_under_torchrun_every_rank_stops_at_the_same_step_when_one_is_signalled(tmp_path, small_demo):
    process, run_dir, started = start_torchrun(tmp_path, small_demo)
    ranks = [pid for pid in started if Path(f"/proc/{pid}/stat").read_text().split()[3] == str(process.pid)]
    assert len(ranks) == 2  # launch/torchrun.sh execs torchrun, whose children are the ranks
    os.kill(ranks[1], signal.SIGTERM)  # one rank only: the other learns of it and stops at the same step
    output = finish(process, tmp_path)
    assert process.returncode != 0  # torchrun reports the ranks' exit status 75 as a failure
    reached = logged_steps(run_dir)[-1]
    folder = run_dir / "checkpoints" / f"step_{reached:07d}"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == folder.name
    assert json.loads((folder / "manifest.json").read_text())["world_size"] == 2
    assert f"exitcode  : {EXIT_PREEMPTED}" in output  # torchrun's report of the ranks
    wait_until_gone(started)


def test_torchrun_passes_sigusr1_on(tmp_path, small_demo):
    process, run_dir, started = start_torchrun(tmp_path, small_demo)
    os.kill(process.pid, signal.SIGUSR1)  # torchrun alone (by default SIGUSR1 would kill it)
    output = finish(process, tmp_path)
    reached = logged_steps(run_dir)[-1]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{reached:07d}", output[-3000:]
    assert f"stopped by SIGUSR1 after step {reached}" in output
    wait_until_gone(started)


def test_ranks_and_their_data_workers_die_with_a_killed_torchrun(tmp_path, small_demo):
    process, run_dir, started = start_torchrun(tmp_path, small_demo)
    assert len(started) >= 4  # 2 ranks, their data workers
    process.kill()  # SIGKILL: torchrun can pass nothing on
    process.wait(timeout=30)
    wait_until_gone(started, timeout=3)  # at once, not after PyTorch's 5 s check of the parent
