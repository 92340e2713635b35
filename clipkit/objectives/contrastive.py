"""Symmetric InfoNCE (the CLIP loss) for one modality pair.

Written against a ``gather`` hook: ``gather(x)`` returns the rows of every process concatenated
(differentiably) and the offset of this process's first row in them; a single process uses
``no_gather``. Two equivalent forms over the global batch of N rows, B of them local:

- local loss (default): this process's B rows against all N columns, labels offset by the rank.
  Logits are B x N per process; averaged over processes (as DDP does with gradients) this is
  exactly the global loss and its gradient.
- global loss: every process scores the full N x N matrix. Same loss and gradients, N/B times
  the logit memory and compute on every process.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from clipkit.objectives.collectives import Gather, no_gather


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              gather: Gather = no_gather, local_loss: bool = True,
              valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the a->b and b->a cross-entropies; a and b are L2-normalised, row i matches row i.

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
    if not local_loss:
        a, b, valid, offset, processes = all_a, all_b, all_valid, 0, 1
    labels = torch.arange(a.shape[0], device=a.device) + offset
    # Columns without a partner are no negatives. The lowest finite value rather than -inf: a row
    # with every column blocked then stays finite (and unscored), so no branch on the count of
    # valid rows is needed, and the step never waits for the GPU to read it.
    blocked = ~all_valid[None, :]
    logits_a = logit_scale * a @ all_b.T
    logits_b = logit_scale * b @ all_a.T
    lowest = torch.finfo(logits_a.dtype).min
    logits_a, logits_b = logits_a.masked_fill(blocked, lowest), logits_b.masked_fill(blocked, lowest)
    labels = labels.masked_fill(~valid, -100)  # rows without a partner are not scored
    per_row = (F.cross_entropy(logits_a, labels, reduction="sum", ignore_index=-100)
               + F.cross_entropy(logits_b, labels, reduction="sum", ignore_index=-100)) / 2
    # Averaged over processes (as DDP averages gradients), this is the mean over all valid rows;
    # with none, an exact zero that still depends on a, b and the scale (DDP expects each gradient).
    return per_row * processes / all_valid.sum().clamp(min=1)
