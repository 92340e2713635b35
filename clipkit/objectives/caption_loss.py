"""``loss.caption``: next-token cross-entropy of model.caption's decoder, per source modality."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clipkit.config.checks import RunFacts, named_weights, positive
from clipkit.errors import ConfigError
from clipkit.objectives.collectives import Collectives


@dataclass
class CaptionLossConfig:
    """Next-token cross-entropy of model.caption's decoder (padding ignored), per source."""

    weight: float = 0.0
    source_weights: dict[str, float] = field(default_factory=dict)  # e.g. {audio: 0.5}; others 1

    def check(self, key: str, run: RunFacts) -> None:
        positive(f"{key}.weight", self.weight, allow_zero=True)
        named_weights(
            f"{key}.source_weights", self.source_weights, list(run.caption_sources), "source", "model.caption.sources"
        )
        if self.weight > 0 and not run.caption_sources:
            raise ConfigError(
                f"{key}.weight",
                "a caption loss needs a decoder: set model.caption.sources (e.g. [image]) or pick model=tiny_coca",
            )
        if run.caption_sources and self.weight == 0:
            raise ConfigError(
                "model.caption.sources",
                f"the caption decoder would not train with {key}.weight=0; set a weight or drop the sources",
            )


def caption_loss(nll: torch.Tensor, tokens: torch.Tensor, comm: Collectives) -> torch.Tensor:
    """Mean next-token loss over the global batch's scored tokens; averaged over processes (as DDP
    averages gradients) it is the global mean."""
    count = comm.sum(tokens.sum().float()).detach()
    return nll.sum() * comm.world_size / count.clamp(min=1)  # no token: an exact zero
