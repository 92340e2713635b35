"""Retrieval recall@k between items and their queries, named as CLIP_benchmark names them.

With images and captions: ``image_retrieval_recall@k``: for each caption, its image is among the k
most similar images; ``text_retrieval_recall@k``: for each image, one of its captions is among the
k most similar captions. Other modalities are named the same way (``audio_retrieval_recall@k``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT


def retrieval_metrics(
    items: Tensor,
    texts: Tensor,
    text_to_item: Tensor,
    item_name: str = IMAGE,
    text_name: str = TEXT,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    scores = texts.float() @ items.float().T  # captions x items
    metrics: dict[str, float] = {}
    # caption -> item: rank of the true item among all items
    true_scores = scores.gather(1, text_to_item[:, None])
    item_rank = (scores > true_scores).sum(dim=1)
    # item -> caption: best rank among the item's own captions
    positives = text_to_item[None, :] == torch.arange(items.shape[0])[:, None]  # items x captions
    per_item = scores.T  # items x captions
    best_true = per_item.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    text_rank = (per_item > best_true).sum(dim=1)
    for k in ks:
        metrics[f"{item_name}_retrieval_recall@{k}"] = (item_rank < k).double().mean().item()
    for k in ks:
        metrics[f"{text_name}_retrieval_recall@{k}"] = (text_rank < k).double().mean().item()
    return metrics
