"""Symmetric InfoNCE (the CLIP loss) for one modality pair.

Written against a ``gather`` hook so the distributed version only swaps the hook: ``gather(x)``
returns the rows of every process concatenated, and the offset of this process's first row in
them. Each process then scores its own rows against all gathered columns ("local loss"), which
keeps the logit matrix at local x global rather than global x global.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], Tuple[torch.Tensor, int]]


def no_gather(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    return x, 0


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              gather: Gather = no_gather) -> torch.Tensor:
    """Mean of the a->b and b->a cross-entropies; a and b are L2-normalised, row i matches row i."""
    all_a, offset = gather(a)
    all_b, _ = gather(b)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_a = logit_scale * a @ all_b.T
    logits_b = logit_scale * b @ all_a.T
    return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
