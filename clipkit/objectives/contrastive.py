"""Symmetric InfoNCE (the CLIP loss) for one modality pair, with its variants on the negatives.

Written against a ``gather`` hook: ``gather(x)`` returns the rows of every process concatenated
(differentiably) and the offset of this process's first row in them; a single process uses
``no_gather``. Two equivalent forms over the global batch of N rows, B of them local:

- local loss (default): this process's B rows against all N columns, labels offset by the rank.
  Logits are B x N per process; averaged over processes (as DDP does with gradients) this is
  exactly the global loss and its gradient.
- global loss: every process scores the full N x N matrix. Same loss and gradients, N/B times
  the logit memory and compute on every process.

Variants (:class:`NegativeRule`, each per row of each direction):

- hardness-weighted negatives (Robinson et al., "Contrastive Learning with Hard Negative
  Samples", 2021): the negatives' sum is replaced by M times their mean under weights
  proportional to exp(beta * cosine), M the row's number of negatives, so the hardest ones
  count most; optionally debiased for false negatives with the class prior tau+ (their eq. 4,
  floored at M exp(-scale) as in their code);
- decoupled (Yeh et al., "Decoupled Contrastive Learning", 2022): the positive is left out of
  the denominator, -log(exp(s_pos) / sum over negatives).

Hard-negative columns (:class:`HardNegatives`: per row K captions that contradict it, NegCLIP's
recipe) join the b side's columns of the a->b direction only, gathered across processes like the
other columns, so every row meets every row's hard negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipkit.objectives.collectives import Gather, no_gather


@dataclass(frozen=True)
class NegativeRule:
    hardness: float = 0.0  # beta; 0: every negative weighs the same (plain InfoNCE)
    debias: float = 0.0  # tau+, the prior share of false negatives; 0: off
    decoupled: bool = False

    @property
    def plain(self) -> bool:
        return self.hardness == 0 and self.debias == 0 and not self.decoupled


@dataclass(frozen=True)
class HardNegatives:
    """This process's rows' hard negatives on the b side: ``embeddings`` R x K x D (normalised),
    ``present`` R x K (a row may have fewer than K); each column's share of the denominator is
    multiplied by ``weight``."""

    embeddings: torch.Tensor
    present: torch.Tensor
    weight: float = 1.0


def clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: Gather = no_gather,
    local_loss: bool = True,
    valid: torch.Tensor | None = None,
    rule: NegativeRule = NegativeRule(),
    hard: HardNegatives | None = None,
) -> torch.Tensor:
    """Mean of the a->b and b->a losses; a and b are L2-normalised, row i matches row i.

    ``valid`` marks the rows that carry both modalities: only they are scored, and only they are
    negatives. The mean is over the valid rows of the global batch; where there are none, the
    loss is an exact zero that still depends on a and b.
    """
    rows = a.shape[0]
    if valid is None:
        valid = torch.ones(rows, dtype=torch.bool, device=a.device)
    all_a, offset = gather(a)
    all_b, _ = gather(b)
    all_valid = gather(valid.to(a.dtype))[0].detach() > 0.5
    processes = all_a.shape[0] // rows
    columns_b, columns_b_valid, column_log_weight = all_b, all_valid, None
    if hard is not None:
        negatives, _ = gather(hard.embeddings.flatten(0, 1))
        # A hard negative counts where its row carries both modalities and has that negative.
        present = (hard.present & valid[:, None]).flatten().to(a.dtype)
        negatives_valid = gather(present)[0].detach() > 0.5
        columns_b = torch.cat([all_b, negatives])
        columns_b_valid = torch.cat([all_valid, negatives_valid])
        column_log_weight = torch.cat(
            [all_b.new_zeros(all_b.shape[0]), all_b.new_full((negatives.shape[0],), math.log(hard.weight))]
        )
    if not local_loss:
        a, b, valid, offset, processes = all_a, all_b, all_valid, 0, 1
    labels = torch.arange(a.shape[0], device=a.device) + offset
    labels = labels.masked_fill(~valid, -100)  # rows without a partner are not scored
    per_row = (
        _direction_loss(a, columns_b, logit_scale, labels, columns_b_valid, rule, column_log_weight)
        + _direction_loss(b, all_a, logit_scale, labels, all_valid, rule)
    ) / 2
    # Averaged over processes (as DDP averages gradients), this is the mean over all valid rows;
    # with none, an exact zero that still depends on a, b and the scale (DDP expects each gradient).
    return per_row * processes / all_valid.sum().clamp(min=1)


def _direction_loss(
    rows: torch.Tensor,
    columns: torch.Tensor,
    scale: torch.Tensor,
    labels: torch.Tensor,
    columns_valid: torch.Tensor,
    rule: NegativeRule,
    column_log_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over the scored rows (label >= 0) of -log(positive's share), one direction."""
    logits = scale * rows @ columns.T  # (scale * rows) @ columns.T, as CLIP and open_clip round it
    if column_log_weight is not None:
        logits = logits + column_log_weight
    # Columns without a partner are no negatives. The lowest finite value rather than -inf: a row
    # with every column blocked then stays finite (and unscored), so no branch on the count of
    # valid rows is needed, and the step never waits for the GPU to read it.
    lowest = torch.finfo(logits.dtype).min
    blocked = ~columns_valid[None, :]
    if rule.plain:
        return F.cross_entropy(logits.masked_fill(blocked, lowest), labels, reduction="sum", ignore_index=-100)
    scored = labels >= 0
    row_index = torch.arange(labels.shape[0], device=labels.device)
    positive_column = labels.clamp(min=0)
    positive = logits[row_index, positive_column]
    is_positive = torch.zeros_like(logits, dtype=torch.bool)
    is_positive[row_index, positive_column] = True
    negative = ~(blocked | is_positive)
    count = negative.sum(dim=1)
    log_count = count.clamp(min=1).to(logits.dtype).log()
    # log of the negatives' sum: M times their weighted mean (plain weights 1/M: the plain sum)
    if rule.hardness:
        cosines = rows @ columns.T
        log_weights = torch.log_softmax((rule.hardness * cosines).masked_fill(~negative, lowest), dim=1)
        log_negatives = torch.logsumexp((logits + log_weights).masked_fill(~negative, lowest), dim=1) + log_count
    else:
        log_negatives = torch.logsumexp(logits.masked_fill(~negative, lowest), dim=1)
    if rule.debias:
        # (sum - tau+ M exp(s_pos)) / (1 - tau+), in logs, floored at M exp(-scale)
        share = math.log(rule.debias) + log_count + positive - log_negatives  # log(tau+ M e^pos / sum)
        debiased = log_negatives + torch.log1p(-share.clamp(max=-1e-6).exp()) - math.log(1 - rule.debias)
        floor = log_count - scale
        log_negatives = torch.where(share < 0, torch.maximum(debiased, floor), floor)
    denominator = log_negatives if rule.decoupled else torch.logaddexp(positive, log_negatives)
    # A row without negatives learns nothing (plain InfoNCE's loss there is 0 as well).
    per_row = (denominator - positive) * (scored & (count > 0))
    return per_row.sum()
