"""Steps whose gradients are not finite (a diverging run) are skipped, counted, and end the run
after too many in a row, without the host ever waiting for the device to decide.

With a fused optimizer (clipkit's AdamW) the decision stays on the device: the gradient norm's
finiteness becomes the fused kernel's ``found_inf`` flag, which makes the kernel leave weights,
moments and step counts as they were (the mechanism GradScaler uses for fp16; under fp16 the
scaler sets the flag itself). Other optimizers (timm's) have no such flag: the host reads the
finiteness each step and skips the optimizer's step, one wait for the device a step, as
GradScaler's own path for them. The counts are device tensors, read when the step is logged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

from clipkit.errors import ClipkitError


class DivergenceError(ClipkitError):
    pass


def gradient_norm(parameters: Iterable[torch.nn.Parameter], clip: float | None) -> torch.Tensor:
    """The global gradient norm (clipping to ``clip`` if given), whole under FSDP (a collective)."""
    parameters = [p for p in parameters if p.grad is not None]
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class NonfiniteGuard:
    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, max_in_a_row: int) -> None:
        self.on_device = bool(optimizer.defaults.get("fused"))  # the kernel reads found_inf
        self.optimizer = optimizer
        self.scaler = scaler
        self.max_in_a_row = max_in_a_row
        self.total: torch.Tensor | None = None  # since the previous check; on the device
        self.in_a_row: torch.Tensor | None = None
        self.last_in_a_row = 0

    def before_step(self, grad_norm: torch.Tensor) -> bool:
        """Called between backward and the optimizer step with the step's gradient norm; whether
        to call the optimizer's step (always for a fused one, whose kernel skips by itself)."""
        bad = (~torch.isfinite(grad_norm)).long()
        if self.on_device and not self.scaler.is_enabled():
            self.optimizer.found_inf = bad.float()  # read by the fused kernel: 1 skips the update
        if self.total is None or self.in_a_row is None:
            self.total, self.in_a_row = torch.zeros_like(bad), torch.zeros_like(bad)
        self.total = self.total + bad
        self.in_a_row = (self.in_a_row + 1) * bad
        return self.on_device or not bool(bad)  # a host read: waits for the device

    def read(self) -> int:
        """The steps skipped since the previous read. Reads the device: on logging steps only."""
        if self.total is None or self.in_a_row is None:
            return 0
        self.last_in_a_row, total = int(self.in_a_row), int(self.total)
        self.total = torch.zeros_like(self.total)
        return total

    def stop_if_diverged(self, step: int) -> None:
        """Raises if the last :meth:`read` found ``max_in_a_row`` steps skipped in a row."""
        if self.last_in_a_row >= self.max_in_a_row:
            raise DivergenceError(
                f"training diverged: the gradients were not finite in the last {self.last_in_a_row} steps (up "
                f"to step {step}; trainer.max_nonfinite_steps={self.max_in_a_row}); those updates were skipped, "
                "so every checkpoint holds finite weights. Lower optim.lr, raise sched.warmup_steps or set "
                "trainer.grad_clip_norm, then resume from checkpoints/latest"
            )
