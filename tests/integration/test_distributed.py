"""torchrun with 2 processes (gloo on CPU), started for real."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipkit.objectives.terms.base import PAIR_TERMS
from clipkit.train import checkpoint as ckpt
from tests.conftest import demo_overrides, descendants, run_cli, run_command, torchrun
from tests.integration.dist_harness import PER_RANK, Job, reference
from tests.integration.test_export import OPEN_CLIP_ZERO_SHOT, first_images

HARNESS = str(Path(__file__).with_name("dist_harness.py"))


# The pair terms the modes above cover; every other registered term is run as "term:NAME".
COVERED_TERMS = {"contrastive", "sigmoid", "uniformity", "alignment", "cross_uniformity", "distill"}
OTHER_TERMS = [f"term:{name}" for name in PAIR_TERMS.names() if name not in COVERED_TERMS]
ONE_STEP_MODES = [
    *("local", "global", "accum", "masked", "sigmoid", "geometry", "coca", "distill", "negatives"),
    *OTHER_TERMS,
]
FSDP_MODES = ["local", "sigmoid", "locked", "accum", "coca"]
BF16_PRECISIONS = ["bf16", "bf16-weights"]
TIMM_OPTIMIZERS = ["timm/lamb", "timm/lion"]  # their states follow FSDP's sharded parameters


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    """Every job of the three tests below, in one torchrun launch of 2 processes."""
    jobs = [
        *(Job(mode) for mode in ONE_STEP_MODES),
        *(Job(mode, parallel, 20) for mode in FSDP_MODES for parallel in ("ddp", "fsdp")),
        *(Job("coca", "fsdp", 1, precision) for precision in BF16_PRECISIONS),
        *(Job("local", parallel, 20, optimizer=name) for name in TIMM_OPTIMIZERS for parallel in ("ddp", "fsdp")),
        *(Job("gradients", parallel, 3, optimizer="timm/muon") for parallel in ("ddp", "fsdp")),
        Job("gradients", "ddp", 3),
    ]
    out = tmp_path_factory.mktemp("harness")
    result = run_command(torchrun(2, [HARNESS, str(out), *(job.name for job in jobs)]), out, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("mode", ONE_STEP_MODES)
def test_two_processes_equal_one_process_on_the_whole_batch(harness, mode):
    """2 ranks x B rows (local loss, full gathered matrix, 2 accumulated halves per rank, or rows
    lacking a modality, all of them on one rank; and so for the sigmoid loss, the geometry terms
    the caption loss, distillation, InfoNCE with hard negatives and their rules, and any other
    registered pair term) give the loss and the gradients of one process on the 2B rows, and
    nothing hangs."""
    expected_loss, expected = reference(2 * PER_RANK, mode)
    for rank in (0, 1):
        got = Job(mode).results(harness, rank)
        assert abs(got["loss"].item() - expected_loss.item()) <= 1e-5
        assert got["grads"].keys() == expected.keys()
        worst = max((got["grads"][n] - expected[n]).abs().max().item() for n in expected)
        assert worst <= 1e-5, (rank, worst)


@pytest.mark.parametrize("mode", FSDP_MODES)
def test_fsdp_equals_ddp(harness, mode):
    """FSDP2 and DDP on 2 processes: the same first-step loss and gradients (<= 1e-6), both equal
    to one process on the whole batch, and the same weights after 20 AdamW steps (<= 1e-4). coca:
    the caption loss calls tower and head methods other than forward, which FSDP must gather for."""
    expected_loss, expected = reference(2 * PER_RANK, mode)
    ddp = Job(mode, "ddp", 20).results(harness, 0)
    assert ddp["grads"].keys() == expected.keys()
    for got in (Job(mode, "fsdp", 20).results(harness, rank) for rank in (0, 1)):
        assert abs(got["loss"].item() - ddp["loss"].item()) <= 1e-6
        assert abs(got["loss"].item() - expected_loss.item()) <= 1e-5
        assert got["grads"].keys() == expected.keys()
        assert max((got["grads"][n] - ddp["grads"][n]).abs().max().item() for n in expected) <= 1e-6
        assert max((got["grads"][n] - expected[n]).abs().max().item() for n in expected) <= 1e-5
        assert got["weights"].keys() == ddp["weights"].keys()
        worst = max((got["weights"][n] - ddp["weights"][n]).abs().max().item() for n in ddp["weights"])
        assert worst <= 1e-4, worst
    if mode == "locked":  # the locked tower takes no gradient, under FSDP too
        assert not any(n.startswith("towers.text") for n in expected)


@pytest.mark.parametrize("optimizer", TIMM_OPTIMIZERS)
def test_timm_optimizers_under_fsdp_equal_ddp(harness, optimizer):
    """optim.name=timm/...: LAMB's per-tensor trust ratios and Lion's signs over sharded
    parameters give DDP's weights after 20 steps."""
    ddp = Job("local", "ddp", 20, optimizer=optimizer).results(harness, 0)
    adamw = Job("local", "ddp", 20).results(harness, 0)
    for rank in (0, 1):
        got = Job("local", "fsdp", 20, optimizer=optimizer).results(harness, rank)
        assert got["weights"].keys() == ddp["weights"].keys()
        worst = max((got["weights"][n] - ddp["weights"][n]).abs().max().item() for n in ddp["weights"])
        assert worst <= 1e-4, worst
    assert any(not torch.allclose(ddp["weights"][n], adamw["weights"][n]) for n in ddp["weights"])  # not AdamW


def test_muon_under_fsdp_equals_ddp(harness):
    """timm/muon orthogonalises each matrix's update (Newton-Schulz, in bf16): over sharded
    matrices (DTensor) as over whole ones, within 1e-4 after 3 steps of full-rank gradients, where
    its updates differ from AdamW's by ~3e-3."""
    ddp = Job("gradients", "ddp", 3, optimizer="timm/muon").results(harness, 0)
    adamw = Job("gradients", "ddp", 3).results(harness, 0)
    for rank in (0, 1):
        got = Job("gradients", "fsdp", 3, optimizer="timm/muon").results(harness, rank)
        worst = max((got["weights"][n] - ddp["weights"][n]).abs().max().item() for n in ddp["weights"])
        assert worst <= 1e-4, worst
    moved = max((ddp["weights"][n] - adamw["weights"][n]).abs().max().item() for n in ddp["weights"])
    assert moved > 1e-3


@pytest.mark.parametrize("precision", BF16_PRECISIONS)
def test_fsdp_bf16_with_and_without_autocast_is_fp32_within_bf16_precision(harness, precision):
    """FSDP2 gathering bf16 weights, under autocast and without it (trainer.fsdp.autocast=false:
    every tower op in bf16), InfoNCE with the caption loss (towers and caption head): the first
    step's loss and every gradient of 2 processes are those of one fp32 process on the whole
    batch, to bf16's precision (seen: loss 3e-4 relative, gradients <= 4.2 % of their norm)."""
    expected_loss, expected = reference(2 * PER_RANK, "coca")
    got = Job("coca", "fsdp", 1, precision).results(harness, 0)
    assert abs(got["loss"].item() - expected_loss.item()) <= 1e-3 * expected_loss.item()
    assert got["grads"].keys() == expected.keys()
    for name, grad in expected.items():
        error = (got["grads"][name] - grad).norm() / grad.norm()
        assert error <= 0.1, (name, error.item())


@pytest.mark.slow
def test_compiled_towers_under_fsdp_match_eager(tmp_path):
    """trainer.compile with trainer.parallel=fsdp: inductor's kernels on sharded towers give the
    eager single-process loss and gradients within float tolerance (measured: 2e-7 and 2e-5)."""
    job = Job("compiled", "fsdp")
    result = run_command(torchrun(2, [HARNESS, str(tmp_path), job.name]), tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected_loss, expected = reference(2 * PER_RANK, "compiled")
    for rank in (0, 1):
        got = job.results(tmp_path, rank)
        assert abs(got["loss"].item() - expected_loss.item()) <= 1e-5
        assert got["grads"].keys() == expected.keys()
        assert max((got["grads"][n] - expected[n]).abs().max().item() for n in expected) <= 1e-4


def start_in_background(command: list[str], cwd: Path) -> subprocess.Popen:
    """A launch to be killed midway: its output is not read."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def read_steps(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_model_state(ckpt.find_latest(run_dir / "checkpoints"))


def manifest(run_dir: Path) -> dict:
    return json.loads((ckpt.find_latest(run_dir / "checkpoints") / ckpt.MANIFEST_FILE).read_text())


@pytest.mark.slow
def test_fsdp_run_killed_resumes_on_2_1_and_4_processes_and_its_checkpoint_loads_everywhere(tmp_path, small_demo):
    """The tri-modal demo with its text tower locked, in epoch mode, with a data worker per
    process and checkpoints written in the background."""
    base = [
        "-m",
        "clipkit.cli.train",
        *demo_overrides(small_demo),
        "trainer.parallel=fsdp",
        "model.towers.text.lock=true",
        "data.train.resampled=false",
        "trainer.ckpt_every_n_steps=4",
        "trainer.ckpt_async=true",
        "trainer.log_every_n_steps=1",
        "eval=none",
    ]
    reference = tmp_path / "reference"
    result = run_command(torchrun(2, [*base, f"hydra.run.dir={reference}", "trainer.max_steps=16"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "run"
    args = [*base, f"hydra.run.dir={run_dir}", "trainer.max_steps=16"]
    launch = start_in_background(torchrun(2, args), tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "checkpoints" / "step_0000008").is_dir():
        time.sleep(0.1)
    for pid in [launch.pid, *descendants(launch.pid)]:
        os.kill(pid, signal.SIGKILL)
    launch.wait()
    assert max(r["step"] for r in read_steps(run_dir)) < 16, "training finished before it could be killed"
    saved = manifest(run_dir)
    assert (saved["layout"], saved["world_size"]) == ("sharded", 2)
    assert {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp", ckpt.STATE_FILE} <= set(saved["files"])
    locked = {k: v for k, v in final_weights(run_dir).items() if k.startswith("towers.text.")}
    result = run_command(torchrun(2, args), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints'}" in result.stdout + result.stderr
    assert [r["step"] for r in read_steps(run_dir) if "loss/total" in r] == list(range(1, 17))
    # the same samples, augmented the same way, from the sharded model and optimizer state
    expected, final = final_weights(reference), final_weights(run_dir)
    assert max((final[k] - v).abs().max().item() for k, v in expected.items()) <= 1e-6

    # The same checkpoint on one process, two more steps, then on four, two more.
    for processes, steps in ((1, 18), (4, 20)):
        result = run_command(
            torchrun(processes, [*base, f"hydra.run.dir={run_dir}", f"trainer.max_steps={steps}"]), tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert read_steps(run_dir)[-1]["step"] == steps and manifest(run_dir)["world_size"] == processes
    final = final_weights(run_dir)
    assert all(torch.equal(final[k], v) for k, v in locked.items())  # the locked tower never moved

    # ... and read by every downstream tool: evaluation, open_clip export, clipkit.load.
    evaluated = run_cli(
        "clipkit-eval",
        [f"checkpoint={run_dir}", f"out={tmp_path / 'eval'}", f"eval.datasets.shapes.root={small_demo}/eval/shapes"],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    exported = run_cli(
        "clipkit-export", [f"checkpoint={run_dir}", "format=open_clip", f"out={tmp_path / 'oc'}"], tmp_path
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    fresh = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_ZERO_SHOT, str(tmp_path / "oc"), str(small_demo / "eval" / "shapes")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    import clipkit

    assert clipkit.load(str(run_dir)).encode_image(first_images(small_demo / "eval" / "shapes", 2)).shape[0] == 2


@pytest.mark.slow
def test_ddp_checkpoint_resumes_under_fsdp_and_back_and_evaluates(tmp_path, small_demo):
    """The tri-modal demo, its FSDP leg in bf16 without autocast (trainer.fsdp.autocast=false: the
    audio tower's front end in fp32, the rest in FSDP's bf16 weights)."""
    run_dir = tmp_path / "run"
    base = [
        "-m",
        "clipkit.cli.train",
        *demo_overrides(small_demo),
        f"hydra.run.dir={run_dir}",
        "trainer.log_every_n_steps=1",
    ]
    result = run_command(torchrun(2, [*base, "trainer.max_steps=4", "eval=none"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_command(
        torchrun(
            2,
            [
                *base,
                "trainer.max_steps=8",
                "trainer.parallel=fsdp",
                "trainer.precision=bf16",
                "trainer.fsdp.autocast=false",
                "eval.batch_size=7",
                "eval.every_n_steps=3",
            ],
        ),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 4" in result.stdout + result.stderr
    records = read_steps(run_dir)
    assert [r["step"] for r in records if "loss/total" in r] == list(range(1, 9))
    assert all(math.isfinite(r["loss/total"]) for r in records if "loss/total" in r)
    # the demo's eval sets, evaluated with the sharded model over the 2 processes' shares of each,
    # during training (then training goes on sharded) and at its end
    assert [r["step"] for r in records if "eval/shapes/acc1" in r] == [6, 8]
    assert json.loads((run_dir / "eval" / "shapes.json").read_text())["metrics"]["num_samples"] == 96
    assert manifest(run_dir)["layout"] == "sharded"
    # ... and back: the sharded checkpoint resumes under DDP, which writes the full layout again.
    result = run_command(torchrun(2, [*base, "trainer.max_steps=10", "eval=none"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 8" in result.stdout + result.stderr and manifest(run_dir)["layout"] == "full"


@pytest.mark.slow
def test_fsdp_moving_average_is_sharded_resumes_from_either_layout_and_equals_ddps(tmp_path, small_demo):
    """trainer.ema under FSDP: each process averages its own shards. DDP's step-3 checkpoint
    (ema.safetensors) resumed under FSDP to step 5, whose sharded checkpoint (the average among the
    shards) resumed to step 6, ends with the average of DDP's uninterrupted 6 steps; evaluation
    and the readers use it."""
    base = [
        "-m",
        "clipkit.cli.train",
        *demo_overrides(small_demo),
        "trainer.ema.decay=0.5",
        "trainer.ckpt_every_n_steps=3",
        "trainer.log_every_n_steps=1",
        "sched=constant",  # the split run's legs end at other steps: the same rate whatever max_steps
    ]
    whole, split = tmp_path / "ddp", tmp_path / "fsdp"
    result = run_command(torchrun(2, [*base, f"hydra.run.dir={whole}", "trainer.max_steps=6"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fsdp = [*base, f"hydra.run.dir={split}", "trainer.parallel=fsdp"]
    for steps, resume in ((5, whole / "checkpoints" / "step_0000003"), (6, "auto")):
        result = run_command(torchrun(2, [*fsdp, f"trainer.max_steps={steps}", f"trainer.resume={resume}"]), tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_steps(split) if "loss/total" in r] == [4, 5, 6]
    folder = ckpt.find_latest(split / "checkpoints")
    assert manifest(split)["layout"] == "sharded" and ckpt.has_ema(folder)
    assert not (folder / ckpt.EMA_FILE).exists()  # the average is among the shards
    expected, average = final_weights(whole), ckpt.read_model_state(folder)
    assert average.keys() == expected.keys()
    assert max((average[k] - v).abs().max().item() for k, v in expected.items()) <= 1e-5
    raw = ckpt.read_model_state(folder, ema=False)
    assert any(not torch.equal(raw[k], v) for k, v in average.items())
    # Evaluated at the end with the gathered average, as DDP evaluated its own.
    for name in ("shapes", "sounds"):
        got, want = (json.loads((run / "eval" / f"{name}.json").read_text())["metrics"] for run in (split, whole))
        assert got == pytest.approx(want, abs=1e-3), name
    import clipkit

    loaded = clipkit.load(str(split)).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in average.items())


@pytest.mark.slow
def test_distributed_eval_equals_single_process_eval(tmp_path, small_demo):
    run_dir = tmp_path / "run"
    trained = run_cli(
        "clipkit-train",
        [*demo_overrides(small_demo), f"hydra.run.dir={run_dir}", "trainer.max_steps=6", "eval=none"],
        tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    sets = {
        "shapes": ["task=zeroshot_classification"],
        "scenes": ["task=retrieval"],
        "sounds": ["task=zeroshot_classification", "modality=audio"],
        "sound_captions": ["task=retrieval", "modality=audio"],
        "scene_sounds": ["task=retrieval", "modality=image", "against=audio"],
        "compositions": ["task=compositionality"],
    }
    eval_args = [f"checkpoint={run_dir}", "eval.batch_size=16"] + [
        f"eval.datasets.{name}.{setting}"
        for name, settings in sets.items()
        for setting in [f"root={small_demo}/eval/{name}", *settings]
    ]
    single = run_cli("clipkit-eval", [*eval_args, f"out={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    both = run_command(torchrun(2, ["-m", "clipkit.cli.eval", *eval_args, f"out={tmp_path / 'dist'}"]), tmp_path)
    assert both.returncode == 0, both.stderr[-3000:]
    for name, count in (
        ("shapes", 96),
        ("scenes", 60),
        ("sounds", 48),
        ("sound_captions", 40),
        ("scene_sounds", 40),
        ("compositions", 48),
    ):
        one = json.loads((tmp_path / "single" / f"{name}.json").read_text())["metrics"]
        two = json.loads((tmp_path / "dist" / f"{name}.json").read_text())["metrics"]
        assert one["num_samples"] == two["num_samples"] == count
        assert two == pytest.approx(one, abs=1e-6)


@pytest.mark.slow
def test_launch_script_trains_the_demo_in_one_run_folder(tmp_path, small_demo):
    script = Path(__file__).resolve().parents[2] / "launch" / "torchrun.sh"
    result = run_command(
        [
            "bash",
            str(script),
            "--nproc",
            "2",
            "--rdzv",
            "localhost:29517",
            *demo_overrides(small_demo),
            "trainer.max_steps=4",
            "eval=none",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "runs" / "demo").iterdir())
    assert len(runs) == 1, runs  # both processes wrote into rank 0's folder
    assert (runs[0] / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert read_steps(runs[0])[-1]["samples_seen"] == 4 * 16 * 2
