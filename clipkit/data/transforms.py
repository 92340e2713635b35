"""Image preprocessing. Evaluation's is open_clip's own transform, so that exported models declare
exactly what was used; training's is the uint8 crop of clipkit.data.image_crop (open_clip's crops)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from open_clip.transform import image_transform

from clipkit.config.checks import positive
from clipkit.data.device_decode import DeferredImageDecoder
from clipkit.data.image_crop import RATIO, ColourAugment, TrainImageDecoder
from clipkit.errors import ConfigError


@dataclass
class ImageTransformConfig:
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    # bicubic | bilinear | nearest: the eval resize (training crops are bicubic, as open_clip's)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest | longest | squash (eval resize, as open_clip)
    # RandomResizedCrop's area and aspect-ratio ranges for training; eval uses resize + center crop.
    train_crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    train_crop_ratio: list[float] = field(default_factory=lambda: list(RATIO))
    # Training colour augmentations (open_clip_train's aug_cfg), off at probability 0: ColorJitter
    # (brightness, contrast, saturation, hue) with color_jitter_prob, then grayscale with gray_scale_prob
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    color_jitter_prob: float = 0.0
    gray_scale_prob: float = 0.0
    # Training images of more pixels (width x height) are skipped and counted, judged from the file's
    # header before any decode (open_clip_train's --max-image-pixels); null: no limit
    max_pixels: int | None = 25_000_000

    def check(self, key: str, decode_device: str) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"{key}.mean", "mean and std need 3 values (RGB)")
        for name, low, high in (("train_crop_scale", 0.0, 1.0), ("train_crop_ratio", 0.0, math.inf)):
            values = getattr(self, name)
            if len(values) != 2 or not low < values[0] <= values[1] <= high:
                raise ConfigError(f"{key}.{name}", f"needs [min, max] with {low} < min <= max <= {high}, got {values}")
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ConfigError(
                f"{key}.color_jitter",
                f"needs [brightness, contrast, saturation, hue], each >= 0, hue <= 0.5, got {self.color_jitter}",
            )
        for name in ("color_jitter_prob", "gray_scale_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{key}.{name}", f"must lie in [0, 1], got {getattr(self, name)}")
        positive(f"{key}.max_pixels", self.max_pixels)
        if decode_device == "cuda" and (self.color_jitter_prob or self.gray_scale_prob):
            raise ConfigError(
                f"{key}.color_jitter_prob",
                "colour augmentations run in the data workers; they need data.decode_device=cpu",
            )


def build_eval_image_transform(cfg: ImageTransformConfig, image_size: int) -> Callable:
    """PIL image -> float tensor: resize, centre crop, mean/std normalisation (open_clip's)."""
    return image_transform(
        image_size,
        is_train=False,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        resize_mode=cfg.resize_mode,
        interpolation=cfg.interpolation,
    )


def build_train_image_loader(
    cfg: ImageTransformConfig,
    image_size: int,
    decode_device: str = "cpu",
) -> TrainImageDecoder:
    """Image bytes -> a training crop in uint8 (see clipkit.data.image_crop), or with
    ``decode_device=cuda`` the JPEG and its crop box, for the device to decode (clipkit.data.
    device_decode). As in open_clip, the crop is resized bicubic whatever ``cfg.interpolation``
    (which is the eval resize's)."""
    loader = DeferredImageDecoder if decode_device == "cuda" else TrainImageDecoder
    colour = (
        ColourAugment(cfg.color_jitter, cfg.color_jitter_prob, cfg.gray_scale_prob)
        if cfg.color_jitter_prob or cfg.gray_scale_prob
        else None
    )
    return loader(image_size, cfg.train_crop_scale, cfg.train_crop_ratio, colour, cfg.max_pixels)
