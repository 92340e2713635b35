"""The image modality's spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit.data.decode import ImageLoader
from clipkit.data.device_decode import DeviceImages
from clipkit.data.image_crop import ImageNormalizer
from clipkit.data.transforms import build_eval_image_transform, build_train_image_loader
from clipkit.modalities.base import MODALITIES, ModalityFeed, ModalitySpec

if TYPE_CHECKING:
    from clipkit.config.schema import DataConfig
    from clipkit.models.towers.image import ImageTowerConfig


IMAGE = "image"  # the modality's name: model.towers.image, data.keys.image, ...


@MODALITIES.register(IMAGE)
class ImageSpec(ModalitySpec):
    """Images: RGB, resized and centre-cropped for evaluation, random crops in uint8 for training
    (decoded in the data workers, or on the GPU with data.decode_device=cuda)."""

    eval_members = ("webp", "png", "jpg", "jpeg")

    def feed(self, tower: ImageTowerConfig, data: DataConfig, device: torch.device) -> ModalityFeed:
        size, transform = tower.image_size, data.image
        evaluation = build_eval_image_transform(transform, size)
        return ModalityFeed(
            input_shape=(3, size, size),
            dtype=torch.float32,
            train_loader=build_train_image_loader(transform, size, data.decode_device),
            eval_loader=ImageLoader(evaluation),
            on_device=DeviceImages(size, ImageNormalizer(transform.mean, transform.std), device),
            preprocessing="resize + centre crop to the input size, RGB scaled to [0, 1], then (x - mean) / std: "
            f"{evaluation}",
        )

    def signature(self, tower: ImageTowerConfig, data: DataConfig) -> tuple:
        rounded = (tuple(round(v, 6) for v in values) for values in (data.image.mean, data.image.std))
        return (tower.image_size, *rounded)
