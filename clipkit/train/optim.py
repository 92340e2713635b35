"""``optim`` and ``sched``: AdamW (or any of timm's optimizers) with CLIP's parameter groups, and
the warmup + decay learning-rate schedules (a registry: cosine, constant, const_cooldown)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from torch import nn

from clipkit.config.checks import positive
from clipkit.errors import ConfigError
from clipkit.models.multimodal import MultiModalModel
from clipkit.registry import Registry
from clipkit.train.layer_decay import LayerDecayConfig, lr_scales

# (step since the warm-up, steps after the warm-up, sched) -> the factor, 1..0 (min_lr_ratio applied after)
Decay = Callable[[int, int, "SchedConfig"], float]
SCHEDULES: Registry[Decay] = Registry("schedule")


TIMM_PREFIX = "timm/"
MUON_FAMILY = "muon"  # in the name of timm's hybrid optimizers: Muon for matrices, AdamW for the rest


def muon_family() -> list[str]:
    return [TIMM_PREFIX + name for name in list_optimizers() if MUON_FAMILY in name]


@dataclass
class OptimConfig:
    # adamw: torch's fused AdamW; timm/NAME: any of timm.optim.list_optimizers() (lamb, lion, ...)
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # where the optimizer has them
    eps: float = 1e-6  # where the optimizer has one
    momentum: float = 0.9  # timm optimizers with momentum (sgd, lars, ...)
    # Further keyword arguments of the optimizer (open_clip_train's --opt-kwargs), added from the
    # command line with a +: +optim.kwargs.trust_clip=true (timm/lamb), +optim.kwargs.fused=false
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Parameters trained without weight decay besides the model's own choice (tensors of fewer than
    # 2 dimensions, the logit scales): fnmatch patterns on clipkit's parameter names, e.g.
    # "*positional_embedding" (open_clip_train's --wd-exclude)
    no_weight_decay: list[str] = field(default_factory=list)
    # Parameters a Muon-family timm optimizer (timm/muon, timm/adamuon, ...) updates with its AdamW
    # fallback, not by Muon: patterns as above, e.g. "*token_embedding*" (open_clip_train's
    # --opt-fallback-list). Unmatched ones are routed by timm from their shape.
    fallback: list[str] = field(default_factory=list)
    # Layer-wise learning-rate decay per tower (BEiT's rule, see clipkit.train.layer_decay)
    layer_decay: LayerDecayConfig = field(default_factory=LayerDecayConfig)

    def check(self, key: str) -> None:
        if self.name != "adamw" and not (
            self.name.startswith(TIMM_PREFIX) and self.name.removeprefix(TIMM_PREFIX) in list_optimizers()
        ):
            raise ConfigError(
                f"{key}.name",
                f"unknown optimizer '{self.name}': adamw, or timm/NAME with NAME one of timm.optim.list_optimizers() "
                "(e.g. timm/lamb, timm/lion, timm/adafactor)",
            )
        positive(f"{key}.lr", self.lr)
        self.layer_decay.check(f"{key}.layer_decay")
        positive(f"{key}.weight_decay", self.weight_decay, allow_zero=True)
        if len(self.betas) != 2:
            raise ConfigError(f"{key}.betas", "needs two values")
        if self.fallback and MUON_FAMILY not in self.name.removeprefix(TIMM_PREFIX):
            raise ConfigError(
                f"{key}.fallback",
                f"only Muon-family timm optimizers have a fallback ({', '.join(muon_family())}), not {self.name}",
            )


@dataclass
class SchedConfig:
    name: str = "cosine"  # a registered schedule: cosine | constant | const_cooldown
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # final lr as a fraction of optim.lr
    # const_cooldown only: the last steps of the run, over which the rate falls as (1 - t)^power
    cooldown_steps: int = 0
    cooldown_power: float = 1.0

    def check(self, key: str) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"{key}.name", f"unknown schedule '{self.name}' (known: {', '.join(SCHEDULES.names())})")
        positive(f"{key}.warmup_steps", self.warmup_steps, allow_zero=True)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{key}.min_lr_ratio", f"must lie in [0, 1], got {self.min_lr_ratio}")
        positive(f"{key}.cooldown_power", self.cooldown_power)
        if self.name == "const_cooldown" and self.cooldown_steps <= 0:
            raise ConfigError(
                f"{key}.cooldown_steps",
                f"sched=const_cooldown needs the length of its cooldown, e.g. {key}.cooldown_steps=1000 (got "
                f"{self.cooldown_steps})",
            )
        if self.name != "const_cooldown" and self.cooldown_steps:
            raise ConfigError(f"{key}.cooldown_steps", f"only sched=const_cooldown has a cooldown, not '{self.name}'")

    def check_total(self, key: str, total_steps: int) -> None:
        """What needs the run's length: a cooldown inside the steps after the warm-up."""
        if self.cooldown_steps and self.cooldown_steps > total_steps - self.warmup_steps:
            raise ConfigError(
                f"{key}.cooldown_steps",
                f"{self.cooldown_steps} cooldown steps do not fit after {self.warmup_steps} warm-up steps in a run "
                f"of {total_steps}",
            )


@SCHEDULES.register("cosine", SchedConfig)
def cosine(step: int, steps: int, cfg: SchedConfig) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))


@SCHEDULES.register("constant", SchedConfig)
def constant(step: int, steps: int, cfg: SchedConfig) -> float:
    return 1.0


@SCHEDULES.register("const_cooldown", SchedConfig)
def const_cooldown(step: int, steps: int, cfg: SchedConfig) -> float:
    """Warmup-stable-decay (open_clip_train's const-cooldown): constant, then over the last
    ``cooldown_steps`` a polynomial fall (linear at power 1). The cooldown starts at a fixed
    distance from the end, so a stable phase resumed with a larger trainer.max_steps goes on
    at the full rate, and a cooldown can be branched from any of its checkpoints."""
    start = steps - cfg.cooldown_steps
    if step < start:
        return 1.0
    return max(0.0, 1 - (step - start) / max(1, cfg.cooldown_steps)) ** cfg.cooldown_power


def build_optimizer(model: MultiModalModel, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One group per (learning-rate factor, decayed or not, Muon's fallback or not); the full-rate
    groups first, so that ``param_groups[0]["lr"]`` is the schedule's rate. What is not decayed, the
    model declares (``no_weight_decay()``, timm's protocol), and ``cfg.no_weight_decay`` adds to."""
    names = [name for name, _ in model.named_parameters()]
    for key, patterns in (("no_weight_decay", cfg.no_weight_decay), ("fallback", cfg.fallback)):
        unmatched = [p for p in patterns if not any(_matches(name, [p]) for name in names)]
        if unmatched:
            raise ConfigError(
                f"optim.{key}", f"{unmatched[0]!r} matches no parameter of the model (names look like {names[0]})"
            )
    scales = lr_scales(model, vars(cfg.layer_decay))
    no_decay = model.no_weight_decay()
    groups: dict[tuple[float, bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decayed = name not in no_decay and not _matches(name, cfg.no_weight_decay)
            key = (scales.get(name, 1.0), decayed, _matches(name, cfg.fallback))
            groups.setdefault(key, []).append(param)
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1], item[0][2]))
    param_groups = [
        {
            "params": params,
            "lr": cfg.lr * scale,
            "weight_decay": cfg.weight_decay if decayed else 0.0,
            **({"use_fallback": True} if fallback else {}),  # read by timm's Muon-family optimizers
        }
        for (scale, decayed, fallback), params in ordered
    ]
    if cfg.name.startswith(TIMM_PREFIX):
        try:  # timm drops betas, eps and momentum where its optimizer has none
            return create_optimizer_v2(
                param_groups,
                opt=cfg.name.removeprefix(TIMM_PREFIX),
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                momentum=cfg.momentum,
                betas=tuple(cfg.betas),
                eps=cfg.eps,
                **cfg.kwargs,
            )
        except (ImportError, AssertionError) as exc:  # e.g. bitsandbytes' and apex's: not installed, or no GPU
            raise ConfigError("optim.name", f"timm cannot build {cfg.name} here: {exc}") from None
        except TypeError as exc:  # a keyword it does not take
            raise ConfigError("optim.kwargs", f"{cfg.name}: {exc}") from None
    # The fused kernel updates all tensors at once, on CPU too: for the demo model on 2 cores, 7.5
    # instead of 52 ms a step, where the per-tensor loop was ~5% of the step.
    params = [p for group in param_groups for p in group["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    try:
        return torch.optim.AdamW(
            param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **{"fused": fused, **cfg.kwargs}
        )
    except (TypeError, RuntimeError) as exc:  # a keyword AdamW does not take, or not with the fused kernel
        raise ConfigError("optim.kwargs", f"torch.optim.AdamW: {exc}") from None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@contextmanager
def optimizer_errors(name: str) -> Iterator[None]:
    """Around the optimizer's step: a timm optimizer whose state cannot follow FSDP's sharded
    (DTensor) parameters (timm/adafactor's factored moments) fails at its first step; one line."""
    try:
        yield
    except RuntimeError as exc:
        if name.startswith(TIMM_PREFIX) and "DTensor" in str(exc):
            raise ConfigError(
                "optim.name",
                f"{name} cannot update FSDP's sharded parameters ({str(exc).splitlines()[0]}); use it with "
                "trainer.parallel=ddp, or one that can (timm/lamb and timm/lion are tested under FSDP)",
            ) from None
        raise


def lr_factor(step: int, total_steps: int, cfg: SchedConfig) -> float:
    """Multiplier of optim.lr at ``step`` (from 0): linear warmup, then the schedule's decay."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay = SCHEDULES.get(cfg.name).build(step - cfg.warmup_steps, total_steps - cfg.warmup_steps, cfg)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: SchedConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))


def reapply_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After a resume: the rates of the step to come from this run's schedule, not the ones the
    checkpoint's optimizer carries, so that a changed trainer.max_steps or sched (a cooldown
    branched from a stable run) applies from the first resumed step."""
    scheduler.last_epoch -= 1
    scheduler.step()  # recomputes the rates of step last_epoch
