"""A real SLURM on localhost with two nodes: the sbatch script (srun -> torchrun on each node) and
srun without torchrun."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import demo_overrides
from tests.integration.slurm_cluster import LocalSlurm, missing_reason

SBATCH_SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "slurm" / "train.sbatch"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    # Jobs inherit the submitter's environment: clipkit's scripts on PATH, one thread per process,
    # and the rendezvous address, as the node names n1, n2 do not resolve here.
    cluster.env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        RDZV_HOST="127.0.0.1",
    )
    yield cluster
    cluster.stop()


def trained_steps(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def submit(slurm: LocalSlurm, folder: Path, args, nodes: int = 1, **env: str) -> tuple[str, str]:
    """sbatch the launch script from ``folder``; the job id and its output once it has succeeded."""
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--nodes={nodes}",
            f"--chdir={folder}",
            f"--output={folder}/job-%j.out",
            str(SBATCH_SCRIPT),
            *args,
        ],
        env={**slurm.env, **env},
        capture_output=True,
        text=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    job = slurm.wait_for_job(job_id, timeout=300)
    output = (folder / f"job-{job_id}.out").read_text()
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    return job_id, output


def test_sbatch_script_trains_on_two_nodes_and_a_resubmission_resumes(tmp_path, small_demo, slurm):
    args = [*demo_overrides(small_demo), "eval=none", "trainer.log_every_n_steps=1"]
    # One process on each of 2 nodes, meeting at the first node's torchrun.
    job_id, _ = submit(slurm, tmp_path, [*args, "trainer.max_steps=4"], nodes=2, NPROC_PER_NODE="1")
    run_dir = tmp_path / "runs" / "demo" / f"slurm-{job_id}"  # one folder for every process
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert trained_steps(run_dir)[-1]["samples_seen"] == 4 * 16 * 2  # 2 processes x batch 16

    # As after a time limit: a new job continues the old run folder from its last checkpoint.
    _, output = submit(
        slurm,
        tmp_path,
        [*args, "trainer.max_steps=6", "trainer.resume=auto"],
        NPROC_PER_NODE="2",
        CLIPKIT_RUN_ID=f"slurm-{job_id}",
    )
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert [r["step"] for r in trained_steps(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000004'} at step 4" in output


@pytest.mark.faults
def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(tmp_path, small_demo, slurm):
    """What ``--signal=USR1@120`` does before a time limit, sent at once with scancel."""
    args = [
        *demo_overrides(small_demo),
        "eval=none",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=300",
        "trainer.ckpt_every_n_steps=1000",
    ]
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={tmp_path}/job-%j.out", str(SBATCH_SCRIPT), *args],
        env={**slurm.env, "NPROC_PER_NODE": "2"},
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    run_dir = tmp_path / "runs" / "demo" / f"slurm-{job_id}"
    deadline = time.time() + 120
    while not ((run_dir / "metrics.jsonl").is_file() and len(trained_steps(run_dir)) >= 3):
        assert time.time() < deadline, "the job did not start training"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm.env, check=True)
    # Requeued, it is held for SLURM's 2 minutes before it may start again: release it now.
    while slurm.job_state(job_id) != "PENDING":
        assert time.time() < deadline + 60, f"not requeued: {slurm.job_state(job_id)}"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm.env, check=True)
    job = slurm.wait_for_job(job_id, timeout=300)
    output = (tmp_path / f"job-{job_id}.out").read_text()  # both runs: the script appends
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), output[-3000:]
    stopped = re.search(r"stopped by SIGUSR1 after step (\d+); saved", output)
    assert stopped, output[-3000:]
    reached = int(stopped.group(1))
    assert f"requeued SLURM job {job_id}" in output
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{reached:07d}'} at step {reached}" in output
    assert [r["step"] for r in trained_steps(run_dir)] == list(range(1, 301))


def test_srun_without_torchrun_takes_ranks_from_slurm(tmp_path, small_demo, slurm):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            "srun",
            "--ntasks=2",
            "--export=ALL",
            sys.executable,
            "-m",
            "clipkit.cli.train",
            *demo_overrides(small_demo),
            "trainer.max_steps=4",
            "eval=none",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert trained_steps(run_dir)[-1]["samples_seen"] == 4 * 16 * 2
