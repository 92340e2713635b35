"""``loss.distill``: KL from a frozen teacher's logit distributions to the student's, for the pairs
the teacher has (the math: :mod:`clipkit.objectives.distill`; the teacher:
:mod:`clipkit.objectives.teacher`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipkit.config.checks import RunFacts
from clipkit.errors import ConfigError
from clipkit.objectives.distill import distill_loss
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig


@dataclass
class DistillLossConfig(PairTermConfig):
    """KL from a frozen teacher's logit distributions to the student's, per pair the teacher has
    (open_clip's DistillClipLoss)."""

    # A clipkit run or checkpoint folder, an open_clip local-dir folder, or an open_clip weights
    # file (epoch_N.pt, .bin, .safetensors) with teacher_arch naming its architecture.
    teacher: str | None = None
    teacher_arch: str | None = None

    def check(self, key: str, run: RunFacts) -> None:
        super().check(key, run)
        if self.weight > 0 and not self.teacher:
            raise ConfigError(
                f"{key}.teacher",
                "distillation needs a teacher: a clipkit run or checkpoint "
                "folder, an open_clip local-dir folder, or an open_clip weights file",
            )

    def pair_parameters(self, init_logit_scale: float) -> dict[str, Any]:
        return {"contrastive_scale": init_logit_scale}  # the student's logits use the pair's scale


@PAIR_TERMS.register("distill", DistillLossConfig)
class DistillTerm(PairTerm):
    def applies(self, batch: PairBatch) -> bool:
        return batch.teacher is not None and batch.pair in batch.teacher.scales

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        teacher = batch.teacher
        return distill_loss(
            batch.a,
            batch.b,
            teacher.embeddings[batch.first],
            teacher.embeddings[batch.second],
            batch.learnable(batch.model.logit_scale(batch.pair)),
            teacher.scales[batch.pair],
            self.comm.gather,
            batch.valid,
        )
