"""Compositionality (SugarCrepe, ARO): does an item's true caption score above captions that use
the same words to say something else ("a blue circle left of a red square" for "a red circle left
of a blue square")? A bag-of-words model cannot tell them apart, so it scores about chance."""

from __future__ import annotations

import torch


def true_caption_wins(
    items: torch.Tensor, captions: torch.Tensor, negatives: torch.Tensor, owner: torch.Tensor
) -> torch.Tensor:
    """Per item (row of ``items``, normalised), whether its caption's similarity is above every
    one of its perturbed captions'; ``owner[j]`` is the item of ``negatives[j]``. Ties lose."""
    true = (items * captions).sum(dim=-1)
    perturbed = (items[owner] * negatives).sum(dim=-1)
    best = true.new_full(true.shape, float("-inf")).scatter_reduce(0, owner, perturbed, reduce="amax")
    return true > best


def compositionality_metrics(wins: list[bool], categories: list[str]) -> dict[str, float]:
    """``acc`` over every sample, and ``acc_<category>`` per category."""
    metrics = {"acc": sum(wins) / len(wins)}
    for category in sorted(set(categories)):
        chosen = [win for win, c in zip(wins, categories) if c == category]
        metrics[f"acc_{category}"] = sum(chosen) / len(chosen)
    return {**metrics, "num_samples": len(wins)}
