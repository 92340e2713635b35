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

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], Tuple[torch.Tensor, int]]


def no_gather(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    return x, 0


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              gather: Gather = no_gather, local_loss: bool = True) -> torch.Tensor:
    """Mean of the a->b and b->a cross-entropies; a and b are L2-normalised, row i matches row i."""
    all_a, offset = gather(a)
    all_b, _ = gather(b)
    if not local_loss:
        a, b, offset = all_a, all_b, 0
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_a = logit_scale * a @ all_b.T
    logits_b = logit_scale * b @ all_a.T
    return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
