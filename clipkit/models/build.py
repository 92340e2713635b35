"""Builds the model together with what feeds it: tokenizer and image transforms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from clipkit.config.validate import CheckedConfig
from clipkit.data.transforms import build_image_transform
from clipkit.models.multimodal import MultiModalModel, build_model
from clipkit.models.towers.text import build_tokenizer


@dataclass
class ModelBundle:
    model: MultiModalModel
    tokenizer: Optional[Callable]
    train_image_transform: Optional[Callable]
    eval_image_transform: Optional[Callable]


def build_bundle(checked: CheckedConfig, device: torch.device) -> ModelBundle:
    cfg = checked.cfg
    model = build_model(cfg.model.embed_dim, checked.towers, cfg.model.pairs,
                        cfg.model.init_logit_scale, cfg.model.max_logit_scale).to(device)
    image = checked.towers.get("image")
    text = checked.towers.get("text")
    return ModelBundle(
        model=model,
        tokenizer=build_tokenizer(text) if text is not None else None,
        train_image_transform=build_image_transform(cfg.data.image, image.image_size, True) if image else None,
        eval_image_transform=build_image_transform(cfg.data.image, image.image_size, False) if image else None,
    )
