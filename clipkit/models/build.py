"""Builds the model together with what feeds it: the tokenizer and, per modality, its spec's feed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipkit.config.schema import LossConfig, ModelConfig
from clipkit.config.validate import CheckedConfig
from clipkit.modalities import MODALITIES, ModalityFeed
from clipkit.modalities.base import Loader
from clipkit.models.multimodal import MultiModalModel, PairParameters, build_model
from clipkit.models.towers.text import build_tokenizer


@dataclass
class ModelBundle:
    """The model and what turns raw sample members into its inputs, per modality (its spec's feed)."""

    model: MultiModalModel
    tokenizer: Callable | None  # None: no text tower
    feeds: dict[str, ModalityFeed]

    def train_loaders(self) -> dict[str, Loader]:
        """Per modality decoded in the data workers (captions aside): a member's bytes -> a row."""
        return {m: feed.train_loader for m, feed in self.feeds.items() if feed.train_loader is not None}

    def eval_loaders(self) -> dict[str, Loader]:
        """Per modality the model encodes (text aside): a sample member's bytes -> eval input."""
        return {m: feed.eval_loader for m, feed in self.feeds.items() if feed.eval_loader is not None}


def pair_parameters(model: ModelConfig, loss: LossConfig) -> PairParameters:
    """The per-pair parameters that the configured loss terms need."""
    needed = {"contrastive_scale": None}  # PairParameters' defaults are InfoNCE's: off unless a term asks
    for term in loss.pair_terms().values():
        if term.weight > 0:
            needed.update(term.pair_parameters(model.init_logit_scale))
    return PairParameters(**needed, max_logit_scale=model.max_logit_scale)


def build_bundle(checked: CheckedConfig, device: torch.device) -> ModelBundle:
    cfg = checked.cfg
    model = build_model(
        cfg.model.embed_dim, checked.towers, cfg.model.pairs, pair_parameters(cfg.model, cfg.loss), cfg.model.caption
    ).to(device)
    return ModelBundle(
        model=model,
        tokenizer=build_tokenizer(checked.towers["text"]) if "text" in checked.towers else None,
        feeds={m: MODALITIES.get(m).build().feed(tower, cfg.data, device) for m, tower in checked.towers.items()},
    )
