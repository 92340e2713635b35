"""An exponential moving average of the weights (``trainer.ema.decay``), kept beside the model.

timm's ModelEmaV3 does the averaging (one foreach lerp over parameters and buffers per step, on the
model's device). After the update that ends step t it holds, for every tensor,
``ema = decay * ema + (1 - decay) * weights``; the update of step 1 copies the weights (timm's
rule when it is given the step). With ``warmup``, the decay used at step t is
``min(decay, 1 - t ** (-2/3))`` (timm's warm-up), so a short fine-tuning run is not held at its
starting weights.

Checkpoints keep the average in ``ema.safetensors`` beside the raw weights; evaluation during
training, ``clipkit-eval``, ``clipkit-export`` and ``clipkit.load`` use the average in place of the
raw weights, and a resumed run goes on averaging from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3
from torch import nn


@dataclass
class EMAConfig:
    """An exponential moving average of the weights, evaluated and exported in their place."""

    decay: float = 0.0  # per step, e.g. 0.999; 0: off
    warmup: bool = False  # decay min(decay, 1 - step ** -2/3): short runs are not held at the start


class WeightAverage:
    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        # fp32 whatever the training precision: a bf16 average cannot hold (1 - decay) updates.
        self._ema = ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup, dtype=torch.float32)
        self._ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model, in eval mode: what evaluation and the exports use."""
        return self._ema.module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After the optimizer step that ended ``step`` (1-based)."""
        self._ema.update(model, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._ema.module.load_state_dict(state, strict=True)
