"""The training image path: open_clip's random resized crop, drawn before the image is decoded.

open_clip decodes every image at full size, crops a part of it and shrinks that with Pillow's
bicubic filter, then converts the result to float in the data worker. Here the crop is drawn first,
from the image's header (its size), with torchvision's own ``RandomResizedCrop.get_params`` and the
same generator, so the crops are exactly torchvision's. A JPEG is then decoded by libjpeg-turbo
straight into an array (simplejpeg: no Pillow image to copy out of; about half Pillow's time with
that copy), at the smallest DCT scale (1/2, 1/4, 1/8) at which the crop still covers the model's
size; the scales between 1/2 and 1 are left out, as libjpeg-turbo decodes them more slowly than at
full size. The crop is resized in ``uint8`` by torch's antialiased bicubic kernel (AVX2: about 7x
Pillow's speed, within a level or two of Pillow's result). The worker ships ``uint8``, a quarter of
float's bytes between processes and to the device; the one conversion to float, with the mean/std
normalisation, runs on the whole batch on the training device (:class:`ImageNormalizer`).
Evaluation keeps open_clip's transform as it is, so exported models score the same everywhere.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import ColorJitter, RandomGrayscale

DCT_SCALES = (8, 4, 2)  # the reductions libjpeg-turbo decodes to with its SIMD code, largest first
# torchvision's RandomResizedCrop default aspect-ratio range, which open_clip keeps.
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_NO_MEMORY = torch.empty(1)


def dct_reduction(crop_width: int, crop_height: int, size: int) -> int:
    """The largest JPEG DCT reduction at which a crop of that size still covers ``size`` px."""
    return next((k for k in DCT_SCALES if crop_width >= k * size and crop_height >= k * size), 1)


def _scaled_box(
    crop: tuple[int, int, int, int], shape: tuple[int, ...], full_height: int, full_width: int
) -> tuple[slice, slice]:
    """A crop (top, left, height, width) in full-size pixels -> its rows and columns in the
    decoded image of ``shape``, which may be reduced."""
    top, left, height, width = crop
    sy, sx = shape[0] / full_height, shape[1] / full_width
    first_row, first_col = round(top * sy), round(left * sx)
    return (
        slice(first_row, max(round((top + height) * sy), first_row + 1)),
        slice(first_col, max(round((left + width) * sx), first_col + 1)),
    )


class ColourAugment:
    """open_clip_train's optional colour augmentations (``aug_cfg``'s ``color_jitter_prob`` and
    ``gray_scale_prob``), on the uint8 crop: with probability ``jitter_prob`` torchvision's
    ColorJitter(brightness, contrast, saturation, hue), then RandomGrayscale(``gray_prob``)."""

    def __init__(self, jitter: Sequence[float], jitter_prob: float, gray_prob: float) -> None:
        self.jitter = ColorJitter(*jitter) if jitter_prob > 0 else None
        self.jitter_prob = jitter_prob
        self.gray = RandomGrayscale(gray_prob) if gray_prob > 0 else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.jitter is not None and torch.rand(()) < self.jitter_prob:
            image = self.jitter(image)
        return self.gray(image) if self.gray is not None else image


class TrainImageDecoder:
    """Image bytes -> ``uint8`` tensor (3, size, size): a random resized crop of the image, resized
    with the antialiased bicubic filter, as open_clip's training crop always is, then the colour
    augmentations if any. An image of more than ``max_pixels`` is refused from its header, before
    any pixel is decoded (the sample is skipped and counted)."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float],
        ratio: Sequence[float] = RATIO,
        colour: ColourAugment | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.size = size
        self.scale = [float(scale[0]), float(scale[1])]
        self.ratio = [float(ratio[0]), float(ratio[1])]
        self.colour = colour
        self.max_pixels = max_pixels

    def check_size(self, height: int, width: int) -> None:
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise ValueError(f"image of {width} x {height} px is over data.image.max_pixels ({self.max_pixels:_} px)")

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) in full-size pixels: torchvision's draw from torch's generator
        (it reads only the image's shape: here a tensor of that shape that holds no memory)."""
        return RandomResizedCrop.get_params(_NO_MEMORY.expand(3, height, width), self.scale, self.ratio)

    def __call__(self, data: bytes) -> torch.Tensor:
        image = self.resize(*self.decode(data))
        return self.colour(image) if self.colour is not None else image

    def decode(self, data: bytes) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """The decoded pixels (H, W, 3), at a DCT scale where one applies, and the crop's rows and
        columns in them. A JPEG goes from libjpeg-turbo straight into an array (simplejpeg); other
        formats, and JPEGs that it cannot turn into RGB (CMYK), go through Pillow."""
        try:
            full_height, full_width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return self._decode_with_pillow(data)
        self.check_size(full_height, full_width)
        crop = self.crop_box(full_height, full_width)
        reduction = dct_reduction(crop[3], crop[2], self.size)
        try:
            pixels = simplejpeg.decode_jpeg(
                data, "RGB", min_height=math.ceil(full_height / reduction), min_width=math.ceil(full_width / reduction)
            )
        except ValueError:  # CMYK, or damaged: Pillow converts the one and names what is wrong with the other
            return self._decode_with_pillow(data, crop)
        return torch.from_numpy(pixels), _scaled_box(crop, pixels.shape, full_height, full_width)

    def _decode_with_pillow(
        self,
        data: bytes,
        crop: tuple[int, int, int, int] | None = None,
    ) -> tuple[torch.Tensor, tuple[slice, slice]]:
        image = Image.open(io.BytesIO(data))  # reads the header only
        full_width, full_height = image.size
        self.check_size(full_height, full_width)
        crop = crop or self.crop_box(full_height, full_width)
        reduction = dct_reduction(crop[3], crop[2], self.size) if image.format == "JPEG" else 1
        if reduction > 1:
            image.draft("RGB", (math.ceil(full_width / reduction), math.ceil(full_height / reduction)))
        image.load()  # decode now, so that a truncated file fails here
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.array(image)  # a copy: Pillow's own array is read-only
        return torch.from_numpy(pixels), _scaled_box(crop, pixels.shape, full_height, full_width)

    def resize(self, pixels: torch.Tensor, box: tuple[slice, slice]) -> torch.Tensor:
        crop = pixels[box].permute(2, 0, 1).unsqueeze(0)  # channels-last: the fast kernel's layout
        return F.interpolate(crop, size=(self.size, self.size), mode="bicubic", antialias=True)[0]


class ImageNormalizer:
    """A batch of ``uint8`` images -> float, normalised as torchvision's ToTensor + Normalize do
    (divide by 255, subtract the mean, divide by the std: the same operations in the same order).
    Float input passes unchanged (the zeros that stand in for absent images)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if images.device not in self._on_device:  # copied once: a copy per step would wait for the GPU
            self._on_device[images.device] = (self.mean.to(images.device), self.std.to(images.device))
        mean, std = self._on_device[images.device]
        return images.float().div_(255).sub_(mean).div_(std)
