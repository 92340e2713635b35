"""AdamW with CLIP's parameter groups, and warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from clipkit.config.schema import OptimConfig, SchedConfig
from clipkit.train.layer_decay import lr_scales


def _exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm gains, class tokens and logit scales: every tensor of fewer than 2 dimensions.

    Token and positional embeddings are decayed, as open_clip_train does. Measured with
    benchmarks/parity_open_clip.py (5 seeds, digits): exempting them gave acc1 0.903 with a 0.219
    spread over seeds (one seed collapsed), decaying them 0.938 with a 0.022 spread.
    """
    return param.ndim < 2 or "logit_scale" in name


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One group per (learning-rate factor, decayed or not); the full-rate groups first, so that
    ``param_groups[0]["lr"]`` is the schedule's rate."""
    scales = lr_scales(model, vars(cfg.layer_decay))
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (scales.get(name, 1.0), not _exempt_from_decay(name, param))
            groups.setdefault(key, []).append(param)
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))
    param_groups = [
        {"params": params, "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (scale, decayed), params in ordered
    ]
    # The fused kernel updates all tensors at once, on CPU too: for the demo model on 2 cores, 7.5
    # instead of 52 ms a step, where the per-tensor loop was ~5% of the step.
    params = [p for group in param_groups for p in group["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def lr_factor(step: int, total_steps: int, cfg: SchedConfig) -> float:
    """Multiplier of optim.lr at ``step``: linear warmup, then cosine (or constant) decay."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: SchedConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
