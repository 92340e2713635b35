"""Modality pairs are named "a_b" (model.pairs): e.g. image_text."""

from __future__ import annotations


def split_pair(pair: str) -> tuple[str, str]:
    """'image_text' -> ('image', 'text')."""
    first, _, second = pair.partition("_")
    return first, second
