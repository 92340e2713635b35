"""data.bucket_pool: batches of captions of similar length, so that data.text_pad_multiple pays on
web data.

Cutting a batch's tokens after its longest caption (clipkit.data.text_length) gains little where a
long tail of captions reaches the context length in most batches, as web alt text does. Each data
worker therefore reads a pool of raw samples, orders it by caption length, cuts the order into
groups of one batch, and hands the groups out in a random order: a batch then holds captions of
nearly one length, and its cut follows them. This is open_clip main's --length-bucketing, with
groups of exactly one batch (its --bucket-chunk apart from the batch size lets a batch straddle two
lengths). Every sample of the pool is still used once; what changes is which samples share a batch
(and so each other's negatives), within the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from clipkit.models.caption import PAD_ID


def caption_lengths(tokenizer: Callable[[list[str]], torch.Tensor], captions: Sequence[str | None]) -> list[int]:
    """Tokens per caption (start and end tokens included, capped at the context); 0 for none."""
    present = [c for c in captions if c is not None]
    counts = iter((tokenizer(present) != PAD_ID).sum(dim=-1).tolist() if present else [])
    return [next(counts) if c is not None else 0 for c in captions]


def bucketed_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """The indices of ``lengths`` sorted by length (ties in index order), cut into groups of
    ``batch_size``, the groups shuffled."""
    ordered = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(groups)
    return [i for group in groups for i in group]
