"""Numeric precision: autocast context and gradient scaler for fp32 | bf16 | fp16."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_factory(
    precision: str, device: torch.device, enabled: bool = True
) -> Callable[[], contextlib.AbstractContextManager]:
    """``enabled=False`` (trainer.fsdp.autocast=false): no autocast, the step computes in the dtype
    FSDP gathers the weights in."""
    if precision == "fp32" or not enabled:
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A live scaler for fp16 only; for other precisions a disabled one (a no-op with the same API)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
