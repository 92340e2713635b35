"""Text: captions, tokenised a batch at a time by open_clip's tokenizer (clipkit.data.decode)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit.modalities.base import MODALITIES, ModalityFeed, ModalitySpec

if TYPE_CHECKING:
    from clipkit.config.schema import DataConfig
    from clipkit.models.towers.text import TextTransformerConfig


TEXT = "text"  # the modality's name: model.towers.text, data.keys.text, ...


@MODALITIES.register(TEXT)
class TextSpec(ModalitySpec):
    def feed(self, tower: TextTransformerConfig, data: DataConfig, device: torch.device) -> ModalityFeed:
        return ModalityFeed(
            input_shape=(tower.context_length,),
            dtype=torch.long,
            train_loader=None,
            eval_loader=None,
            preprocessing="open_clip's CLIP BPE tokenizer, padded with 0 to the context length",
        )

    def signature(self, tower: TextTransformerConfig, data: DataConfig) -> tuple:
        return (tower.context_length,)
