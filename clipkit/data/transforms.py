"""Image preprocessing. Evaluation's is open_clip's own transform, so that exported models declare
exactly what was used; training's is the uint8 crop of clipkit.data.image_crop (open_clip's crops)."""
from __future__ import annotations

from typing import Callable

from open_clip.transform import AugmentationCfg, image_transform

from clipkit.config.schema import ImageTransformConfig
from clipkit.data.image_crop import TrainImageDecoder


def build_image_transform(cfg: ImageTransformConfig, image_size: int, train: bool) -> Callable:
    """Train: random resized crop; eval: resize + center crop. Both end in mean/std normalisation."""
    return image_transform(
        image_size, is_train=train, mean=tuple(cfg.mean), std=tuple(cfg.std),
        resize_mode=cfg.resize_mode, interpolation=cfg.interpolation,
        aug_cfg=AugmentationCfg(scale=tuple(cfg.train_crop_scale)),
    )


def build_train_image_loader(cfg: ImageTransformConfig, image_size: int) -> TrainImageDecoder:
    """Image bytes -> a training crop in uint8 (see clipkit.data.image_crop); as in open_clip, the
    crop is resized bicubic whatever ``cfg.interpolation`` (which is the eval resize's)."""
    return TrainImageDecoder(image_size, cfg.train_crop_scale)
