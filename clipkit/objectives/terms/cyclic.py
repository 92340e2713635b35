"""``loss.cyclic``: CyCLIP's cycle consistency (Goel et al., "CyCLIP: Cyclic Contrastive
Language-Image Pretraining", NeurIPS 2022) for each pair (a, b), on the cosines of the global batch:

- cross-modal: (a_i . b_j - a_j . b_i)^2, the similarity of i to j the same seen from either side;
- in-modal: (a_i . a_j - b_i . b_j)^2, the two modalities arranging the batch alike;

each summed over the valid (i, j) and divided by the count of valid rows, as CyCLIP's code does
(``mean() * batch_size`` of the squared differences of logits, over the squared logit scale).
CyCLIP trains with both at 0.25 beside InfoNCE: ``loss.cyclic.weight=0.25``. Each process scores
its rows against the gathered columns; the mean over processes (as DDP averages gradients) is the
global value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.config.checks import RunFacts, positive
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig


@dataclass
class CyclicLossConfig(PairTermConfig):
    """CyCLIP's cross-modal and in-modal cycle consistency of a pair's cosines."""

    cross_modal: float = 1.0  # relative weight of (a_i . b_j - a_j . b_i)^2
    in_modal: float = 1.0  # relative weight of (a_i . a_j - b_i . b_j)^2

    def check(self, key: str, run: RunFacts) -> None:
        super().check(key, run)
        positive(f"{key}.cross_modal", self.cross_modal, allow_zero=True)
        positive(f"{key}.in_modal", self.in_modal, allow_zero=True)


@PAIR_TERMS.register("cyclic", CyclicLossConfig)
class CyclicTerm(PairTerm):
    cfg: CyclicLossConfig

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        a, b, valid, comm = batch.a, batch.b, batch.valid, self.comm
        all_a, _ = comm.gather(a)
        all_b, _ = comm.gather(b)
        all_valid = comm.gather(valid.to(a.dtype))[0].detach() > 0.5
        scored = (valid[:, None] & all_valid[None, :]).to(a.dtype)
        cross = (a @ all_b.T - b @ all_a.T).square()
        in_modal = (a @ all_a.T - b @ all_b.T).square()
        total = ((self.cfg.cross_modal * cross + self.cfg.in_modal * in_modal) * scored).sum()
        count = comm.sum(valid.sum().to(torch.float32)).detach()
        return total * comm.world_size / count.clamp(min=1)  # no valid row: an exact zero
