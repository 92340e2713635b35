"""``loss.uniformity``, ``loss.alignment``, ``loss.cross_uniformity``: Wang & Isola's geometry of
the embeddings as training terms (the math: :mod:`clipkit.objectives.geometry`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.objectives.geometry import alignment, cross_uniformity, uniformity
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig


@dataclass
class UniformityLossConfig(PairTermConfig):
    """log mean exp(-t |x_i - x_j|^2) of each modality of a pair, averaged over the two."""

    POSITIVE = ("t",)

    t: float = 2.0


@dataclass
class AlignmentLossConfig(PairTermConfig):
    """mean |x_i - y_i|^alpha over a pair's partners."""

    POSITIVE = ("alpha",)

    alpha: float = 2.0


@dataclass
class CrossUniformityLossConfig(UniformityLossConfig):
    """log mean exp(-t |x_i - y_j|^2) over the non-partners of a pair (uniformity's temperature)."""


@PAIR_TERMS.register("uniformity", UniformityLossConfig)
class UniformityTerm(PairTerm):
    cfg: UniformityLossConfig

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        t = self.cfg.t
        return (uniformity(batch.a, t, self.comm, batch.valid) + uniformity(batch.b, t, self.comm, batch.valid)) / 2


@PAIR_TERMS.register("alignment", AlignmentLossConfig)
class AlignmentTerm(PairTerm):
    cfg: AlignmentLossConfig

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        return alignment(batch.a, batch.b, self.cfg.alpha, self.comm, batch.valid)


@PAIR_TERMS.register("cross_uniformity", CrossUniformityLossConfig)
class CrossUniformityTerm(PairTerm):
    cfg: CrossUniformityLossConfig

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        return cross_uniformity(batch.a, batch.b, self.cfg.t, self.comm, batch.valid)
