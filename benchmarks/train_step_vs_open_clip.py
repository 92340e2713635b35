"""Training-step speed and memory of clipkit against open_clip on the same model and batch.

    python benchmarks/train_step_vs_open_clip.py [--model tiny|vit_b16|...] [--batch 128]
        [--steps 10] [--device cpu|cuda] [--precision fp32|bf16]

Both sides start from the same weights: open_clip's model is the one `clipkit-export format=open_clip`
writes, built with open_clip's own classes and loaded with clipkit's weights. Each times one full
step on a fixed batch of random images and real tokenized captions: forward, InfoNCE loss
(open_clip's ClipLoss; clipkit's objective), backward, AdamW with CLIP's weight-decay groups (as
open_clip's trainer builds it; clipkit's is fused), logit-scale clamp. No gradient clipping on
either side. Data loading is not included. Each framework runs in a process of its own, so peak
memory is its own (CPU: max RSS; CUDA: peak allocated). The first step's loss is printed for
both: equal values show the two compute the same thing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import time
from typing import Callable, Dict

import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.export.open_clip import open_clip_config, open_clip_state_dict
from clipkit.models.build import build_bundle
from clipkit.objectives.objective import Objective
from clipkit.train.optim import build_optimizer
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.step import forward_backward

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "cross"]


def _batch(tokenizer, size: int, image_size: int, device: torch.device) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    captions = [f"a {COLOURS[i % 6]} {SHAPES[i % 4]} left of a {COLOURS[(i // 6) % 6]} {SHAPES[(i // 4) % 4]}"
                for i in range(size)]
    return {"image": torch.randn(size, 3, image_size, image_size, generator=generator).to(device),
            "text": tokenizer(captions).to(device)}


def _clipkit_step(checked, core, batch, device) -> Callable[[], float]:
    objective = Objective(checked.cfg.loss)
    optimizer = build_optimizer(core, checked.cfg.optim)
    autocast = autocast_factory(checked.cfg.trainer.precision, device)
    scaler = grad_scaler(checked.cfg.trainer.precision, device)
    present = {m: torch.ones(batch["image"].shape[0], dtype=torch.bool, device=device) for m in batch}

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        losses = forward_backward(core, core, objective, [batch], [present], autocast, scaler)
        scaler.step(optimizer)
        scaler.update()
        core.clamp_logit_scales()
        return losses["total"].item()
    return step


def _open_clip_step(checked, core, batch, device) -> Callable[[], float]:
    import open_clip

    model_cfg = dict(open_clip_config(checked, core)["model_cfg"])
    model_cfg.pop("custom_text")
    model = open_clip.CustomTextCLIP(**model_cfg).to(device)
    model.load_state_dict(open_clip_state_dict(core))
    loss_fn = open_clip.ClipLoss()
    optim_cfg = checked.cfg.optim
    # open_clip_train/main.py: no weight decay on gains, biases, embeddings and logit_scale.
    exclude, include = [], []
    for n, p in model.named_parameters():
        no_decay = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (exclude if no_decay else include).append(p)
    optimizer = torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0},
                                   {"params": include, "weight_decay": optim_cfg.weight_decay}],
                                  lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    bf16 = checked.cfg.trainer.precision == "bf16"

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            image_features, text_features, logit_scale = model(batch["image"], batch["text"])
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()
    return step


def measure(framework: str, args: argparse.Namespace) -> Dict[str, float]:
    device = torch.device(args.device)
    checked = check_config(compose_config(["experiment=demo_image_text", f"model={args.model}",
                                           f"trainer.precision={args.precision}", "eval=none"]))
    torch.manual_seed(0)
    bundle = build_bundle(checked, device)
    batch = _batch(bundle.tokenizer, args.batch, checked.towers["image"].image_size, device)
    core = bundle.model
    del bundle  # open_clip's step keeps no reference to clipkit's model
    step = (_clipkit_step if framework == "clipkit" else _open_clip_step)(checked, core, batch, device)
    del core
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first_loss = step()
    for _ in range(2):  # warm-up
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"first_loss": first_loss, "seconds_per_step": seconds,
            "samples_per_second": args.batch / seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", help="a clipkit model preset with image and text towers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--framework", choices=["clipkit", "open_clip"], help="(internal) measure one side")
    args = parser.parse_args()
    if args.framework:
        print(json.dumps(measure(args.framework, args)))
        return
    print(f"model={args.model} batch={args.batch} device={args.device} precision={args.precision}, "
          f"mean of {args.steps} steps after 3")
    print(f"{'':<10} {'first loss':>10} {'s/step':>8} {'samples/s':>10} {'peak MB':>9}")
    for framework in ("open_clip", "clipkit"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--framework", framework],
                               capture_output=True, text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{framework:<10} {r['first_loss']:>10.4f} {r['seconds_per_step']:>8.3f} "
              f"{r['samples_per_second']:>10.1f} {r['peak_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
