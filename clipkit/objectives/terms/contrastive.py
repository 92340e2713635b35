"""``loss.contrastive``: symmetric InfoNCE (CLIP) per pair, with a learnable logit scale per pair,
its temperature warm-up, the hardness/debias/decoupled rules and hard-negative caption columns
(the math: :mod:`clipkit.objectives.contrastive`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clipkit.config.checks import RunFacts, positive
from clipkit.data.negatives import HardNegativesConfig
from clipkit.errors import ConfigError
from clipkit.objectives.collectives import Collectives
from clipkit.objectives.contrastive import HardNegatives, NegativeRule, clip_loss
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig
from clipkit.pairs import split_pair


@dataclass
class ContrastiveLossConfig(PairTermConfig):
    """Symmetric InfoNCE (CLIP), with a learnable logit scale per pair."""

    weight: float = 1.0
    # Across processes: each scores its own rows against all gathered columns (B x N logits).
    # false: every process scores the full N x N matrix; same gradients, more memory.
    local_loss: bool = True
    # Temperature warm-up: for the first scale_warmup_steps the loss uses the learned logit scale
    # times a factor rising linearly from scale_warmup_start to 1 (0 steps: off). A lower scale
    # early keeps short runs off the initial loss plateau (see ContrastiveTerm.at_step).
    scale_warmup_steps: int = 0
    scale_warmup_start: float = 0.5
    # Hardness-weighted negatives (Robinson et al. 2021): each negative weighted by exp(hardness *
    # cosine), normalised over the row's negatives; 0: plain InfoNCE. (Robinson et al. apply beta to
    # the scaled logit: their beta is hardness / logit scale.)
    hardness: float = 0.0
    # Their debiasing for false negatives: the prior share tau+ of negatives that are positives, in
    # [0, 1); 0: off.
    debias: float = 0.0
    # Decoupled contrastive learning (Yeh et al. 2022): the positive left out of the denominator.
    decoupled: bool = False
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)

    def check(self, key: str, run: RunFacts) -> None:
        super().check(key, run)
        positive(f"{key}.scale_warmup_steps", self.scale_warmup_steps, allow_zero=True)
        if not 0 < self.scale_warmup_start <= 1:
            raise ConfigError(f"{key}.scale_warmup_start", f"must lie in (0, 1], got {self.scale_warmup_start}")
        self.hard_negatives.check(f"{key}.hard_negatives")
        if self.hard_negatives.source is not None and (
            self.weight == 0 or not any("text" in split_pair(pair) for pair in run.pairs)
        ):
            raise ConfigError(
                f"{key}.hard_negatives.source",
                "hard-negative captions join the contrastive terms of the pairs with "
                f"text; this run has none (model.pairs {list(run.pairs)}, loss.contrastive.weight "
                f"{self.weight})",
            )
        positive(f"{key}.hardness", self.hardness, allow_zero=True)
        if not 0 <= self.debias < 1:
            raise ConfigError(f"{key}.debias", f"a share of false negatives in [0, 1), got {self.debias}")

    def pair_parameters(self, init_logit_scale: float) -> dict[str, Any]:
        return {"contrastive_scale": init_logit_scale}


@PAIR_TERMS.register("contrastive", ContrastiveLossConfig)
class ContrastiveTerm(PairTerm):
    cfg: ContrastiveLossConfig

    def __init__(self, cfg: ContrastiveLossConfig, comm: Collectives) -> None:
        super().__init__(cfg, comm)
        self.rule = NegativeRule(cfg.hardness, cfg.debias, cfg.decoupled)
        self.scale_factor = 1.0

    def at_step(self, step: int) -> None:
        """Temperature warm-up (scale_warmup_steps): the learned logit scale times a factor rising
        linearly to 1. The learned scale barely moves in a short run (Adam moves its log by at most
        the learning rate per step), so its initial value sets the temperature of the whole run. On
        the parity digits set, CLIP's 1/0.07 from the first step left 4 of 10 seeds on the initial
        plateau (loss ln N) at step 100; half of it rising to all of it over 150 steps left none
        (benchmarks/plateau_screen.py)."""
        steps, start = self.cfg.scale_warmup_steps, self.cfg.scale_warmup_start
        self.scale_factor = min(1.0, start + (1.0 - start) * step / steps) if steps else 1.0

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        a, b = batch.a, batch.b
        hard = None
        if "text_negatives" in batch.outputs and "text" in (batch.first, batch.second):
            negatives = batch.outputs["text_negatives"]
            if batch.anchored == "text":
                negatives = negatives.detach()
            hard = HardNegatives(negatives, batch.present["text_negatives"], self.cfg.hard_negatives.weight)
            if batch.first == "text":  # the negatives are columns of the other side's rows
                a, b = b, a
        scale = batch.learnable(batch.model.logit_scale(batch.pair))
        if self.scale_factor != 1.0:
            scale = scale * self.scale_factor
        return clip_loss(a, b, scale, self.comm.gather, self.cfg.local_loss, batch.valid, self.rule, hard)
