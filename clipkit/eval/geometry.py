"""Embedding geometry of two modalities' matched embeddings, as the contrastive-gap literature
reports it (Liang et al. 2022, "Mind the Gap"; Fahim et al. 2024, "It's Not a Modality Gap").

For n pairs (x_i, y_i) of L2-normalised embeddings:

- ``modality_gap``: |mean(x) - mean(y)|, the distance between the two clouds' centroids;
- ``uniformity_<x>``, ``uniformity_<y>``: log mean_{i != j} exp(-2 |x_i - x_j|^2) over each
  modality's distinct embeddings (lower: spread more evenly over the sphere);
- ``alignment``: mean |x_i - y_i|^2 (lower: partners closer);
- ``matched_cosine``: mean x_i . y_i;
- ``linear_separability``: held-out accuracy of a logistic regression telling x from y (0.5: the
  clouds overlap, 1.0: a hyperplane splits the modalities).
"""

from __future__ import annotations

import numpy as np
import torch


def _uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    x = torch.unique(x, dim=0)  # a class or item embedding repeated for each of its partners counts once
    distances = torch.cdist(x, x).pow(2)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool)
    return float(torch.exp(-t * distances[off_diagonal]).mean().log())


def _separability(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression  # here: importing sklearn adds ~1 s to every start

    features = torch.cat([x, y]).numpy()
    labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    classifier = LogisticRegression(max_iter=1000).fit(features[train], labels[train])
    return float(classifier.score(features[test], labels[test]))


def geometry_metrics(
    x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str, max_pairs: int = 5000, seed: int = 0
) -> dict[str, float]:
    """x, y: (n, D) matched rows, L2-normalised. At most ``max_pairs`` rows (a seeded draw)."""
    x, y = x.double(), y.double()
    if len(x) > max_pairs:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        x, y = x[keep], y[keep]
    if len(x) < 4:
        return {}
    return {
        "modality_gap": float((x.mean(0) - y.mean(0)).norm()),
        f"uniformity_{x_name}": _uniformity(x),
        f"uniformity_{y_name}": _uniformity(y),
        "alignment": float((x - y).pow(2).sum(1).mean()),
        "matched_cosine": float((x * y).sum(1).mean()),
        "linear_separability": _separability(x.float(), y.float(), seed),
    }
