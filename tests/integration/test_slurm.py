"""A real SLURM on localhost with two nodes: the sbatch script (srun -> torchrun on each node) and
srun without torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

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
    cluster.env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RDZV_HOST="127.0.0.1")
    yield cluster
    cluster.stop()


def trained_steps(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def submit(slurm: LocalSlurm, folder: Path, args, nodes: int = 1, **env: str) -> Tuple[str, str]:
    """sbatch the launch script from ``folder``; the job id and its output once it has succeeded."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={nodes}", f"--chdir={folder}", f"--output={folder}/job-%j.out",
         str(SBATCH_SCRIPT), *args],
        env={**slurm.env, **env}, capture_output=True, text=True)
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
    _, output = submit(slurm, tmp_path, [*args, "trainer.max_steps=6", "trainer.resume=auto"],
                       NPROC_PER_NODE="2", CLIPKIT_RUN_ID=f"slurm-{job_id}")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert [r["step"] for r in trained_steps(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000004'} at step 4" in output


def test_srun_without_torchrun_takes_ranks_from_slurm(tmp_path, small_demo, slurm):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        ["srun", "--ntasks=2", "--export=ALL", sys.executable, "-m", "clipkit.cli.train",
         *demo_overrides(small_demo), "trainer.max_steps=4", "eval=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=slurm.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert trained_steps(run_dir)[-1]["samples_seen"] == 4 * 16 * 2
