"""A run forced to diverge (a learning rate far too high) skips its non-finite updates, never
writes a non-finite checkpoint, and stops with one line and a non-zero exit status."""

import json

import pytest
import torch

from clipkit.train import checkpoint as ckpt
from tests.conftest import demo_overrides, run_cli


@pytest.mark.faults
@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_finite_checkpoints(tmp_path, small_demo):
    run_dir = tmp_path / "run"
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            f"hydra.run.dir={run_dir}",
            "eval=none",
            "optim.lr=1e4",
            "sched.warmup_steps=0",
            "trainer.grad_clip_norm=null",
            "trainer.max_steps=60",
            "trainer.ckpt_every_n_steps=2",
            "trainer.keep_last_k=100",
            "trainer.log_every_n_steps=1",
            "trainer.max_nonfinite_steps=3",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged" in errors[0], result.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("nonfinite_steps")]
    assert skipped and skipped[-3:] == list(range(skipped[-1] - 2, skipped[-1] + 1))  # 3 in a row, then stop
    assert records[-1]["step"] == skipped[-1] < 60
    folders = ckpt.complete_checkpoints(run_dir / "checkpoints")
    assert folders and ckpt.find_latest(run_dir / "checkpoints") == folders[-1]
    for folder in folders:
        assert all(torch.isfinite(v).all() for v in ckpt.read_model_state(folder).values()), folder
