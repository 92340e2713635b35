"""data.decode_device=cuda: JPEGs decoded on the training GPU (nvJPEG), for hosts short of CPU cores.

The data worker still reads the JPEG's header and draws the random resized crop (the same draw, from
the same generator, as on the CPU path: the crops and a resumed run's samples stay the same), but it
ships the compressed bytes and the crop box instead of pixels. On the training device a batch's
JPEGs are decoded in one call (``torchvision.io.decode_jpeg`` on a list), then each is cropped and
resized with the antialiased bicubic kernel of the CPU path; :class:`ImageNormalizer` converts the
batch to float as before. The GPU decodes at full size: the DCT scaling that saves the CPU path most
of its decode does not apply there. Images that nvJPEG cannot take (other formats, CMYK JPEGs) are
decoded in the worker as on the CPU path and travel as pixels in the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import simplejpeg
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from clipkit.data.image_crop import ImageNormalizer, TrainImageDecoder
from clipkit.models.multimodal import to_device_async

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # top, left, height, width in full-size pixels
_NVJPEG_COLOURSPACES = ("YCbCr", "Gray")  # what a JPEG may hold for nvJPEG to decode it to RGB


@dataclass
class EncodedJpeg:
    """One image as the worker ships it for the device: its bytes and its crop box."""

    data: bytes
    box: Box


@dataclass
class EncodedImages:
    """A batch of ``num_rows`` images for the device: ``pixels`` holds only the rows decoded in
    the worker (at ``pixel_rows``: images nvJPEG cannot take, usually none, so a batch does not
    carry a batch of zeros through shared memory, pinning and the copy); the JPEGs of the others,
    to go at ``rows`` once decoded, lie end to end in one tensor (one shared-memory block between
    processes, not one per image). Rows in neither list have no image and stay zeros."""

    num_rows: int
    pixels: torch.Tensor  # (len(pixel_rows), 3, size, size) uint8
    pixel_rows: list[int]
    jpeg_bytes: torch.Tensor  # 1-D uint8
    jpeg_lengths: list[int]
    boxes: list[Box]
    rows: list[int]

    @property
    def jpegs(self) -> list[torch.Tensor]:
        return list(torch.split(self.jpeg_bytes, self.jpeg_lengths)) if self.jpeg_lengths else []

    def pin_memory(self) -> EncodedImages:
        """Called by a pinning DataLoader: only ``pixels`` is copied to the device as it is (the
        JPEG bytes are read by nvJPEG's host stage)."""
        return replace(self, pixels=self.pixels.pin_memory()) if self.pixel_rows else self


class DeferredImageDecoder(TrainImageDecoder):
    """The worker's side: image bytes -> :class:`EncodedJpeg`, or the uint8 crop of the CPU path
    for an image nvJPEG cannot decode."""

    def __call__(self, data: bytes) -> EncodedJpeg | torch.Tensor:
        try:
            height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return super().__call__(data)
        self.check_size(height, width)
        if colourspace not in _NVJPEG_COLOURSPACES:
            return super().__call__(data)
        if not data[-64:].rstrip(b"\0").endswith(b"\xff\xd9"):  # no end-of-image marker: a cut file
            raise ValueError("truncated JPEG (no end-of-image marker)")
        return EncodedJpeg(data, self.crop_box(height, width))

    def collate(self, rows: Sequence[EncodedJpeg | torch.Tensor | None]) -> EncodedImages:
        """A batch's rows (None where a row has no image) -> :class:`EncodedImages`."""
        decoded = [(i, r) for i, r in enumerate(rows) if isinstance(r, torch.Tensor)]
        pixels = (
            torch.stack([r for _, r in decoded])
            if decoded
            else torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        )
        encoded = [(i, r) for i, r in enumerate(rows) if isinstance(r, EncodedJpeg)]
        joined = bytearray(b"".join(r.data for _, r in encoded))
        jpeg_bytes = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
        return EncodedImages(
            len(rows),
            pixels,
            [i for i, _ in decoded],
            jpeg_bytes,
            [len(r.data) for _, r in encoded],
            [r.box for _, r in encoded],
            [i for i, _ in encoded],
        )


class DeviceImages:
    """The device's side: a batch of training images as the worker shipped them -> normalised
    float on ``device``, decoding :class:`EncodedImages` there. A JPEG that fails to decode is
    dropped from the batch (its row's mask is cleared, so the loss leaves it out) and counted."""

    def __init__(self, size: int, normalize: ImageNormalizer, device: torch.device) -> None:
        self.size = size
        self.normalize = normalize
        self.device = device

    def __call__(
        self,
        images: torch.Tensor | EncodedImages,
        present: torch.Tensor,
    ) -> tuple[torch.Tensor, int]:
        """The batch's images on the device, and how many rows were dropped (cleared in ``present``)."""
        if not isinstance(images, EncodedImages):
            return self.normalize(to_device_async(images, self.device)), 0
        pixels = torch.zeros((images.num_rows, 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        # One row at a time: a list index would be copied to the device from pageable memory,
        # which makes the host wait for the GPU.
        if images.pixel_rows:
            for row, decoded in zip(images.pixel_rows, to_device_async(images.pixels, self.device)):
                pixels[row] = decoded
        dropped = 0
        for row, decoded, box in zip(images.rows, self._decode(images.jpegs), images.boxes):
            if decoded is None:
                present[row] = False
                dropped += 1
            else:
                pixels[row] = self._crop(decoded, box)
        return self.normalize(pixels), dropped

    def _decode(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """All in one call; if that fails, one by one, to find the images at fault."""
        if not jpegs:
            return []
        try:
            return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            return [self._decode_one(jpeg) for jpeg in jpegs]

    def _decode_one(self, jpeg: torch.Tensor) -> torch.Tensor | None:
        """On the device, else on the host (a JPEG nvJPEG rejects may still be sound), else None."""
        for device in (self.device, torch.device("cpu")):
            try:
                return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device).to(self.device)
            except RuntimeError as exc:
                error = exc
        log.warning("skipping an image that cannot be decoded: %s", error)
        return None

    def _crop(self, image: torch.Tensor, box: Box) -> torch.Tensor:
        """The CPU path's crop and resize; in float, as CUDA's antialiased kernel has no uint8 form."""
        top, left, height, width = box
        crop = image[:, top : top + height, left : left + width].unsqueeze(0).float()
        resized = F.interpolate(crop, size=(self.size, self.size), mode="bicubic", antialias=True)[0]
        return resized.round_().clamp_(0, 255).to(torch.uint8)
