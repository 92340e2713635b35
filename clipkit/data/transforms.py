"""Image preprocessing. Evaluation's is open_clip's own transform, so that exported models declare
exactly what was used; training's is the uint8 crop of clipkit.data.image_crop (open_clip's crops)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from open_clip.transform import image_transform

from clipkit.data.device_decode import DeferredImageDecoder
from clipkit.data.image_crop import TrainImageDecoder


@dataclass
class ImageTransformConfig:
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    # bicubic | bilinear | nearest: the eval resize (training crops are bicubic, as open_clip's)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest | longest | squash (eval resize, as open_clip)
    # RandomResizedCrop scale range for training; eval uses resize + center crop.
    train_crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])


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
    return loader(image_size, cfg.train_crop_scale)
