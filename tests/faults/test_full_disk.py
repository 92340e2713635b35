"""A disk that fills up during a save: one line naming it, the previous checkpoint intact."""

import subprocess

import pytest

from clipkit.train import checkpoint as ckpt
from tests.conftest import demo_overrides, run_cli


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: room for one checkpoint of the tiny demo model (~13 MB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.faults
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path, small_disk):
    from clipkit.data.demo import write_demo
    from tests.conftest import SMALL_DEMO

    demo = write_demo(tmp_path / "demo", SMALL_DEMO)
    run_dir = small_disk / "run"
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(demo),
            f"hydra.run.dir={run_dir}",
            "eval=none",
            "trainer.max_steps=6",
            "trainer.ckpt_every_n_steps=2",
            "trainer.keep_last_k=5",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert (
        f"no space left on the file system of {run_dir / 'checkpoints'} while saving step 4; the last "
        "complete checkpoint is step_0000002" in errors[0]
    )
    folder = ckpt.find_latest(run_dir / "checkpoints", checksums=True)
    assert folder.name == "step_0000002" and ckpt.read_model_state(folder)
    assert not list((run_dir / "checkpoints").glob(".step_*"))  # the half-written one is gone
