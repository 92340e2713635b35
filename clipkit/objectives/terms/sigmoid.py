"""``loss.sigmoid``: SigLIP's pairwise sigmoid loss per pair, with a learnable temperature and bias
per pair (the math: :mod:`clipkit.objectives.sigmoid`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipkit.objectives.sigmoid import sigmoid_loss
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig


@dataclass
class SigmoidLossConfig(PairTermConfig):
    """SigLIP's pairwise sigmoid loss, with a learnable temperature and bias per pair."""

    init_scale: float = 2.302585092994046  # log of the temperature: log 10
    init_bias: float = -10.0

    def pair_parameters(self, init_logit_scale: float) -> dict[str, Any]:
        return {"sigmoid": (self.init_scale, self.init_bias)}


@PAIR_TERMS.register("sigmoid", SigmoidLossConfig)
class SigmoidTerm(PairTerm):
    def __call__(self, batch: PairBatch) -> torch.Tensor:
        model, pair = batch.model, batch.pair
        scale, bias = batch.learnable(model.sigmoid_scale(pair)), batch.learnable(model.sigmoid_bias(pair))
        return sigmoid_loss(batch.a, batch.b, scale, bias, self.comm, batch.valid)
