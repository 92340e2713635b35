"""An exponential moving average of the weights (``trainer.ema.decay``), kept beside the model.

timm's ModelEmaV3 does the averaging (one foreach lerp over parameters and buffers per step, on the
model's device). After the update that ends step t it holds, for every tensor,
``ema = decay * ema + (1 - decay) * weights``; the update of step 1 copies the weights (timm's
rule when it is given the step). With ``warmup``, the decay used at step t is
``min(decay, 1 - t ** (-2/3))`` (timm's warm-up), so a short fine-tuning run is not held at its
starting weights.

Under FSDP the average is sharded as the model is: each process keeps and updates the average of
its own shards (no communication), and evaluation gathers it as it gathers the model.

Checkpoints keep the average in ``ema.safetensors`` beside the raw weights (sharded checkpoints:
as ``ema`` entries beside the ``model`` ones); evaluation during training, ``clipkit-eval``,
``clipkit-export`` and ``clipkit.load`` use the average in place of the raw weights, and a resumed
run goes on averaging from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.distributed.tensor import DTensor

from clipkit.errors import ConfigError
from clipkit.train.parallel import load_full_model_state


@dataclass
class EMAConfig:
    """An exponential moving average of the weights, evaluated and exported in their place."""

    decay: float = 0.0  # per step, e.g. 0.999; 0: off
    warmup: bool = False  # decay min(decay, 1 - step ** -2/3): short runs are not held at the start

    def check(self, key: str) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"{key}.decay", f"must lie in [0, 1) (0: off), got {self.decay}")


class WeightAverage:
    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        # fp32 whatever the training precision: a bf16 average cannot hold (1 - decay) updates.
        self._ema = ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup, dtype=torch.float32)
        self._ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model, in eval mode: what evaluation and the exports use."""
        return self._ema.module

    def shard(self, shard: Callable[[nn.Module], nn.Module]) -> None:
        """Shards the average in place as ``shard`` shards the model (FSDP's ``fully_shard`` units)."""
        shard(self._ema.module)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After the optimizer step that ended ``step`` (1-based). timm's rule (ModelEmaV3's decay and
        lerp), on each process's own shards: its update takes no lists that mix DTensors with the
        whole buffers beside them."""
        averages, weights = [], []
        for average, weight in zip(self.module.state_dict().values(), model.state_dict().values()):
            average, weight = _local(average), _local(weight)
            if average.is_floating_point():
                averages.append(average)
                weights.append(weight)
            else:
                average.copy_(weight)
        torch._foreach_lerp_(averages, weights, weight=1.0 - self._ema.get_decay(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The whole averaged weights, as ``ema.safetensors`` holds them; under FSDP each process
        keeps its shards."""
        load_full_model_state(self._ema.module, state)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (a view: writing it writes the DTensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
