"""A random order of choices drawn by weight, for picks that must not depend on what is available."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def weighted_order(weights: Sequence[float], uniform: Callable[[], float]) -> list[int]:
    """The indices of ``weights`` in a random order: the first is i with probability w_i / sum(w),
    the next drawn the same way from the rest, and so on (Efraimidis-Spirakis: key u^(1/w), largest
    first). Indices of weight 0 come last, in their own order (fallbacks only). One draw of
    ``uniform`` per index, whatever its weight, so a later index's draw never moves."""
    draws = [uniform() for _ in weights]
    keys = [u ** (1.0 / w) if w > 0 else -1.0 for w, u in zip(weights, draws)]
    return sorted(range(len(weights)), key=lambda i: -keys[i])
