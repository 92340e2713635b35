"""data.text_pad_multiple: a batch's token rows cut after its longest caption.

Captions are padded to the text tower's context length (77), while most are far shorter (the demo's,
COCO's, AudioCaps' and Clotho's: 10 to 30 tokens), and the text tower's cost grows with the number
of positions. Cut after the batch's longest caption, the rows lose only padding, which a causal
tower pooling the end-of-text or the first token never looks at: every embedding, and the caption
head's losses, stay what they were (``TextTransformerConfig.padding_is_inert``). Rounding the length
up to a multiple keeps the number of distinct shapes small, for torch.compile and for the kernels.
The gain depends on the longest caption in each batch: web alt text with a long tail reaches the
context length in most large batches and gains little.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clipkit.models.caption import PAD_ID


def used_length(tokens: torch.Tensor, multiple: int) -> int:
    """The positions up to the last token that is not padding, in the longest row, rounded up to a
    multiple of ``multiple`` and at most the rows' length; ``tokens``: (..., context) token ids."""
    context = tokens.shape[-1]
    if tokens.numel() == 0:
        return context
    ends = ((tokens != PAD_ID) * torch.arange(1, context + 1)).amax()  # 1 + the last token's position
    return min(context, -(-max(int(ends), 1) // multiple) * multiple)


def cut_padding(tokens: torch.Tensor, multiple: int) -> torch.Tensor:
    """``tokens`` cut after :func:`used_length` positions."""
    return tokens[..., : used_length(tokens, multiple)].contiguous()


def tokenize(tokenizer: Callable[[list[str]], torch.Tensor], texts: list[str], multiple: int | None) -> torch.Tensor:
    """``texts`` tokenized, cut after :func:`used_length` positions unless ``multiple`` is None."""
    tokens = tokenizer(texts)
    return tokens if multiple is None else cut_padding(tokens, multiple)


def inert_multiple(multiple: int | None, text_tower: Any) -> int | None:
    """``multiple`` where the text tower's padding can be cut without changing what it computes
    (``padding_is_inert``), else None: full rows."""
    return multiple if getattr(text_tower, "padding_is_inert", False) else None
