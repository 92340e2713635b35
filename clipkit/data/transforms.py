"""Image preprocessing, delegated to open_clip so exported models declare exactly what was used."""
from __future__ import annotations

from typing import Callable

from open_clip.transform import AugmentationCfg, image_transform

from clipkit.config.schema import ImageTransformConfig


def build_image_transform(cfg: ImageTransformConfig, image_size: int, train: bool) -> Callable:
    """Train: random resized crop; eval: resize + center crop. Both end in mean/std normalisation."""
    return image_transform(
        image_size, is_train=train, mean=tuple(cfg.mean), std=tuple(cfg.std),
        resize_mode=cfg.resize_mode, interpolation=cfg.interpolation,
        aug_cfg=AugmentationCfg(scale=tuple(cfg.train_crop_scale)),
    )
