"""The CUDA path, run for real on a GPU (skipped without one): NCCL, bf16 autocast, the fp16 grad
scaler, pinned copies from data workers, torch.compile with inductor's GPU kernels, and evaluation
and export of the GPU-trained checkpoint. ``pytest -m cuda`` selects these."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipkit.train import checkpoint as ckpt
from tests.conftest import demo_overrides, run_cli, run_command, torchrun
from tests.integration.test_export import OPEN_CLIP_ZERO_SHOT, first_images

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ON_GPU = ["trainer.device=cuda", "trainer.dist_backend=nccl"]
STEPS = 40


def nccl_run(work: Path, small_demo: Path, *overrides: str) -> Path:
    """The tri-modal demo (tiny towers) in one process started by torchrun, on the GPU over NCCL,
    with a data worker (pinned batches) and an evaluation at the end."""
    run_dir = work / "run"
    result = run_command(
        torchrun(
            1,
            [
                "-m",
                "clipkit.cli.train",
                *demo_overrides(small_demo),
                f"hydra.run.dir={run_dir}",
                f"trainer.max_steps={STEPS}",
                "trainer.log_every_n_steps=5",
                "trainer.ckpt_every_n_steps=20",
                *ON_GPU,
                *overrides,
            ],
        ),
        work,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "backend nccl, device cuda:0" in result.stdout + result.stderr
    return run_dir


def loss_records(run_dir: Path):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss/total" in r]


def assert_learned(run_dir: Path) -> None:
    """Every logged loss finite; the image-text term (in every batch, unlike the sound pairs,
    which the mix leaves out of some) lower at the end than at the first log."""
    records = loss_records(run_dir)
    assert [r["step"] for r in records] == list(range(5, STEPS + 1, 5))
    totals = [r["loss/total"] for r in records]
    assert all(loss == loss and abs(loss) < 1e4 for loss in totals), totals
    image_text = [r["loss/contrastive/image_text"] for r in records]
    assert image_text[-1] < image_text[0], image_text


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, small_demo) -> Path:
    work = tmp_path_factory.mktemp("cuda_bf16")
    nccl_run(work, small_demo, "trainer.precision=bf16")
    return work


def test_bf16_demo_on_nccl_learns(bf16_run):
    assert_learned(bf16_run / "run")
    shapes = json.loads((bf16_run / "run" / "eval" / "shapes.json").read_text())["metrics"]
    assert shapes["acc1"] > 1 / 24  # above chance after 40 steps


def test_fp16_demo_on_nccl_learns_with_a_live_grad_scaler(tmp_path, small_demo):
    run_dir = nccl_run(tmp_path, small_demo, "trainer.precision=fp16", "eval=none")
    assert_learned(run_dir)
    state = ckpt.load_train_state(ckpt.find_latest(run_dir / "checkpoints"))
    assert state["scaler"]["scale"] > 0  # a disabled scaler saves an empty state


def test_compiled_demo_on_nccl_learns(tmp_path, small_demo):
    """Rows lacking a modality change each tower's batch size from step to step: the compiled
    towers must take that (dynamic shapes) and still learn."""
    run_dir = nccl_run(tmp_path, small_demo, "trainer.precision=bf16", "trainer.compile=true", "eval=none")
    assert_learned(run_dir)


@pytest.mark.parametrize("autocast", ["true", "false"])
def test_fsdp_demo_on_nccl_learns_and_its_checkpoint_loads_on_cpu(tmp_path, small_demo, autocast):
    """FSDP2 on one GPU: bf16 gathers (its mixed-precision policy, not autocast's weight casts),
    under autocast or without it (every tower op in bf16), fp32 gradient reduction over NCCL, and
    a whole-weights checkpoint that loads without FSDP."""
    run_dir = nccl_run(
        tmp_path,
        small_demo,
        "trainer.precision=bf16",
        "trainer.parallel=fsdp",
        f"trainer.fsdp.autocast={autocast}",
        "eval=none",
    )
    assert_learned(run_dir)
    import clipkit

    model = clipkit.load(str(run_dir), device="cpu")
    embeddings = model.encode_image(first_images(small_demo / "eval" / "shapes", 4))
    assert embeddings.shape[0] == 4 and torch.isfinite(embeddings).all()


def test_gpu_checkpoint_evaluates_the_same_on_the_gpu_again(bf16_run):
    out = bf16_run / "again"
    result = run_cli("clipkit-eval", [f"checkpoint={bf16_run / 'run'}", f"out={out}", "trainer.device=cuda"], bf16_run)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("shapes", "scenes", "sounds"):
        during = json.loads((bf16_run / "run" / "eval" / f"{name}.json").read_text())["metrics"]
        again = json.loads((out / f"{name}.json").read_text())["metrics"]
        assert again == pytest.approx(during, abs=0.02), name


def test_open_clip_export_of_gpu_checkpoint_gives_the_same_embeddings_on_cpu(bf16_run, small_demo):
    out = bf16_run / "open_clip"
    result = run_cli("clipkit-export", [f"checkpoint={bf16_run / 'run'}", "format=open_clip", f"out={out}"], bf16_run)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = small_demo / "eval" / "shapes"
    fresh = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_ZERO_SHOT, str(out), str(shapes)], capture_output=True, text=True, timeout=300
    )  # open_clip on the CPU
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    cpu_eval = run_cli(
        "clipkit-eval",
        [
            f"checkpoint={bf16_run / 'run'}",
            f"out={bf16_run / 'cpu_eval'}",
            "trainer.device=cpu",
            "trainer.precision=fp32",
        ],
        bf16_run,
    )
    assert cpu_eval.returncode == 0, cpu_eval.stderr[-3000:]
    expected = json.loads((bf16_run / "cpu_eval" / "shapes.json").read_text())["metrics"]["acc1"]
    assert got["acc1"] == pytest.approx(expected, abs=1e-6)

    import clipkit

    model = clipkit.load(str(bf16_run / "run"), device="cpu")
    ours = model.encode_image(first_images(shapes, 4))
    assert (ours - torch.tensor(got["first"])).abs().max().item() <= 1e-5


def test_onnx_export_of_gpu_checkpoint_matches_pytorch(bf16_run):
    out = bf16_run / "onnx"
    result = run_cli("clipkit-export", [f"checkpoint={bf16_run / 'run'}", "format=onnx", f"out={out}"], bf16_run)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "onnx_export.json").read_text())
    assert set(manifest["towers"]) == {"image", "text", "audio"}
    assert all(tower["max_abs_diff_vs_pytorch"] <= 1e-4 for tower in manifest["towers"].values())
