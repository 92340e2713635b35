"""Training-step speed, memory and MFU of clipkit against open_clip on the same model and batch.

    python benchmarks/train_step_vs_open_clip.py [--model tiny|vit_b16|vit_b32|...] [--batch 128]
        [--steps 10] [--device cpu|cuda] [--precision fp32|bf16] [--compile] [--repeats 3]
        [--peak-tflops T] [--set KEY=VALUE ...] [--out results.jsonl]
        [--parallel ddp|fsdp --processes N] [--profile DIR] [--text-pad-multiple M]

Both sides start from the same weights: open_clip's model is the one `clipkit-export format=open_clip`
writes, built with open_clip's own classes and loaded with clipkit's weights. Each times one full
step on a fixed batch of random images and real tokenized captions: forward, InfoNCE loss
(open_clip's ClipLoss; clipkit's objective), backward, AdamW with CLIP's weight-decay groups (as
open_clip's trainer builds it; clipkit's is fused), logit-scale clamp. No gradient clipping on
either side, and no read of the loss between steps (neither trainer waits for the GPU every step).
Data loading is not included. `--compile` compiles both: open_clip's whole model as
`open_clip_train --torchcompile` does, clipkit's towers as `trainer.compile=true` does.

Each framework runs in a process of its own, so peak memory is its own (CPU: max RSS; CUDA: peak
allocated), and so is its training state (the weights, gradients and AdamW moments it holds); with
`--repeats N` the two alternate (open_clip first, then clipkit first, ...) and the table gives the
range over the N runs. The first step's loss is printed for both: equal values show
the two compute the same thing. MFU is the model FLOPs of one step (counted by
`torch.utils.flop_counter` on the eager forward and backward: matrix products, convolutions and
attention) times steps per second over the GPU's dense peak for the precision (bf16 on CUDA;
`--peak-tflops` for a GPU not in the table).

With `--parallel`, each side runs under torchrun on `--processes` processes (gloo on CPU, NCCL on
GPUs), `--batch` rows per process, negatives gathered with their gradient (open_clip's ClipLoss
with local_loss and gather_with_grad): clipkit wrapped in DDP or sharded by FSDP2 as
`trainer.parallel` does, open_clip in DDP (open_clip_torch 3.3.0 has no FSDP). Peak memory is the
largest over the processes; samples/s counts every process's rows. `--parallel fsdp --set
trainer.fsdp.autocast=false` times clipkit's step in FSDP's bf16 weights without autocast.

With `--text-pad-multiple M`, clipkit's captions are cut after the batch's longest one, rounded up to
a multiple of M, as `data.text_pad_multiple=M` cuts them (open_clip_torch 3.3.0's trainer always
pads to the context length). The captions here are short (10 tokens): the figure is what batches of
short captions gain, not web alt text, whose longest caption per batch reaches the context.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.data.text_length import used_length
from clipkit.distributed import all_reduce_mean, init_distributed
from clipkit.export.open_clip import open_clip_config, open_clip_state_dict
from clipkit.models.build import build_bundle
from clipkit.objectives.collectives import LOCAL, process_group
from clipkit.objectives.objective import Objective
from clipkit.train.compile import compile_towers
from clipkit.train.optim import build_optimizer
from clipkit.train.parallel import wrap
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.step import forward_backward

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "cross"]
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, matched on the device name.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
}

Step = Callable[[], torch.Tensor]
Optim = torch.optim.Optimizer


def training_state_mb(optimizer: Optim) -> float:
    """This process's weights, gradients and optimizer state (its shards of them under FSDP)."""
    tensors = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            tensors += [
                param,
                *([param.grad] if param.grad is not None else []),
                *(v for v in optimizer.state.get(param, {}).values() if torch.is_tensor(v)),
            ]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local) / 2**20


def _batch(tokenizer, size: int, image_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    captions = [
        f"a {COLOURS[i % 6]} {SHAPES[i % 4]} left of a {COLOURS[(i // 6) % 6]} {SHAPES[(i // 4) % 4]}"
        for i in range(size)
    ]
    return {
        "image": torch.randn(size, 3, image_size, image_size, generator=generator).to(device),
        "text": tokenizer(captions).to(device),
    }


def _clipkit_step(checked, core, batch, device, parallel: str | None) -> tuple[Step, Callable[[], None], Optim]:
    model = core
    if parallel:
        model = wrap(core, parallel, checked.cfg.trainer.fsdp, checked.cfg.trainer.precision)
    world = distributed_world()
    objective = Objective(checked.cfg.loss, process_group(world) if world > 1 else LOCAL)
    optimizer = build_optimizer(core, checked.cfg.optim)
    autocast = autocast_factory(checked.cfg.trainer.precision, device, checked.cfg.trainer.fsdp.autocast)
    scaler = grad_scaler(checked.cfg.trainer.precision, device)
    # Row masks on the host, as the trainer's loader makes them: the model finds the rows to
    # encode there without waiting for the device (from device masks, each step would sync).
    present = {m: torch.ones(batch["image"].shape[0], dtype=torch.bool) for m in batch}

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses = forward_backward(model, objective, [batch], [present], autocast, scaler)
        scaler.step(optimizer)
        scaler.update()
        core.clamp_logit_scales()
        return losses["total"].detach()

    return step, lambda: compile_towers(core), optimizer


def _open_clip_step(checked, core, batch, device, parallel: str | None) -> tuple[Step, Callable[[], None], Optim]:
    import open_clip

    model_cfg = dict(open_clip_config(checked, core)["model_cfg"])
    model_cfg.pop("custom_text")
    model = open_clip.CustomTextCLIP(**model_cfg).to(device)
    model.load_state_dict(open_clip_state_dict(core))
    world = distributed_world()
    loss_fn = open_clip.ClipLoss(
        local_loss=world > 1,
        gather_with_grad=world > 1,
        rank=torch.distributed.get_rank() if world > 1 else 0,
        world_size=world,
    )
    optim_cfg = checked.cfg.optim
    # open_clip_train/main.py: no weight decay on gains, biases, embeddings and logit_scale.
    exclude, include = [], []
    for n, p in model.named_parameters():
        no_decay = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (exclude if no_decay else include).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": exclude, "weight_decay": 0.0}, {"params": include, "weight_decay": optim_cfg.weight_decay}],
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
    )
    bf16 = checked.cfg.trainer.precision == "bf16"
    forward = {"model": DistributedDataParallel(model) if parallel else model}

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            image_features, text_features, logit_scale = forward["model"](batch["image"], batch["text"])
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()

    def compile_model() -> None:  # open_clip_train/main.py: model = torch.compile(original_model)
        forward["model"] = torch.compile(forward["model"])

    return step, compile_model, optimizer


def distributed_world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def measure(framework: str, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    if args.parallel:
        device = init_distributed(args.device).device
    checked = check_config(
        compose_config(
            [
                "experiment=demo_image_text",
                f"model={args.model}",
                f"trainer.precision={args.precision}",
                f"trainer.parallel={args.parallel or 'ddp'}",
                "eval=none",
                *args.set,
            ]
        )
    )
    torch.manual_seed(0)
    bundle = build_bundle(checked, device)
    batch = _batch(bundle.tokenizer, args.batch, checked.towers["image"].image_size, device)
    if framework == "clipkit" and args.text_pad_multiple:
        batch["text"] = batch["text"][:, : used_length(batch["text"].cpu(), args.text_pad_multiple)]
    core = bundle.model
    del bundle  # open_clip's step keeps no reference to clipkit's model
    step, compile_now, optimizer = (_clipkit_step if framework == "clipkit" else _open_clip_step)(
        checked, core, batch, device, args.parallel
    )
    del core
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with FlopCounterMode(display=False) as counter:  # the first step, eager: the model's FLOPs
        first_loss = step().item()
    if args.compile:
        compile_now()
    start = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    sync()
    warmup_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    if args.profile:
        write_profile(step, sync, Path(args.profile) / f"{framework}.txt")
    flops = counter.get_total_flops()
    world = distributed_world()
    if world > 1:  # the largest process's memory, every process's rows and FLOPs
        peak = torch.tensor([peak_mb])
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        peak_mb = float(peak.item())
        first_loss = float(all_reduce_mean(torch.tensor([first_loss])).item())
        flops *= world
    return {
        "first_loss": first_loss,
        "seconds_per_step": seconds,
        "samples_per_second": args.batch * world / seconds,
        "peak_mb": peak_mb,
        "state_mb": training_state_mb(optimizer),
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "warmup_seconds": warmup_seconds,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def write_profile(step: Step, sync: Callable[[], None], path: Path, steps: int = 5) -> None:
    """Where one step's time goes: torch.profiler over ``steps`` more steps, its operators sorted
    by their device time (self time: a kernel counted once, under the operator that launched it)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profiler.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))


def peak_tflops(args: argparse.Namespace, device_name: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda" or args.precision != "bf16":
        return None
    matches = [name for name in BF16_PEAK_TFLOPS if name in device_name]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def _span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else f"{low:.{digits}f}–{high:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", help="a clipkit model preset with image and text towers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each framework")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for MFU")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="clipkit config overrides for the model on both sides, e.g. model.embed_dim=128",
    )
    parser.add_argument("--out", help="append each run's figures as a JSON line to this file")
    parser.add_argument("--profile", help="write each side's operator table (torch.profiler) to DIR/FRAMEWORK.txt")
    parser.add_argument(
        "--parallel",
        choices=["ddp", "fsdp"],
        help="run each side under torchrun: clipkit in DDP or FSDP, open_clip in DDP",
    )
    parser.add_argument("--processes", type=int, default=2, help="processes with --parallel")
    parser.add_argument(
        "--text-pad-multiple", type=int, help="clipkit's captions cut as data.text_pad_multiple=M cuts them"
    )
    parser.add_argument("--framework", choices=["clipkit", "open_clip"], help="(internal) measure one side")
    args = parser.parse_args()
    if args.framework:
        result = measure(args.framework, args)
        if distributed_world() == 1 or torch.distributed.get_rank() == 0:
            print(json.dumps(result))
        return
    setting = (
        f"model={args.model} {' '.join(args.set)} batch={args.batch} device={args.device} "
        f"precision={args.precision} compile={args.compile}"
        + (f" text_pad_multiple={args.text_pad_multiple} (clipkit)" if args.text_pad_multiple else "")
        + (f" parallel={args.parallel} (open_clip: ddp) processes={args.processes}" if args.parallel else "")
    )
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}"]
        if args.parallel
        else [sys.executable]
    )
    print(f"{setting}, mean of {args.steps} steps after 3, {args.repeats} alternating run(s)", flush=True)
    runs: dict[str, list[dict[str, float]]] = {"open_clip": [], "clipkit": []}
    order = ["open_clip", "clipkit"]
    for repeat in range(args.repeats):
        for framework in order if repeat % 2 == 0 else order[::-1]:
            child = subprocess.run(
                [*launcher, __file__, *sys.argv[1:], "--framework", framework], capture_output=True, text=True
            )
            if child.returncode != 0:
                sys.exit(f"{framework} failed:\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            runs[framework].append(result)
            print(
                f"  run {repeat + 1} {framework}: {result['samples_per_second']:.1f} samples/s, "
                f"peak {result['peak_mb']:.0f} MB, training state {result['state_mb']:.0f} MB",
                flush=True,
            )
            if args.out:
                with open(args.out, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"setting": setting, "framework": framework, **result}) + "\n")
    peak = peak_tflops(args, runs["clipkit"][0]["device_name"])
    print(
        f"device: {runs['clipkit'][0]['device_name']}; bf16 dense peak for MFU: "
        f"{f'{peak:.0f} TFLOP/s' if peak else 'n/a'}; {runs['clipkit'][0]['tflop_per_step']:.2f} TFLOP per step"
    )
    print(f"{'':<10} {'first loss':>10} {'s/step':>13} {'samples/s':>15} {'peak MB':>11} {'state MB':>9} {'MFU %':>11}")
    for framework, results in runs.items():
        mfu = _span([100 * r["achieved_tflops"] / peak for r in results], 1) if peak else "n/a"
        print(
            f"{framework:<10} {results[0]['first_loss']:>10.4f} "
            f"{_span([r['seconds_per_step'] for r in results], 4):>13} "
            f"{_span([r['samples_per_second'] for r in results], 0):>15} "
            f"{_span([r['peak_mb'] for r in results], 0):>11} {_span([r['state_mb'] for r in results], 0):>9} "
            f"{mfu:>11}"
        )
    ratio = statistics.median(r["samples_per_second"] for r in runs["clipkit"]) / statistics.median(
        r["samples_per_second"] for r in runs["open_clip"]
    )
    print(f"clipkit / open_clip samples/s (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
