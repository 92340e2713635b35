"""Turning a raw webdataset sample (bytes per member) into model inputs, one modality at a time.

A sample that cannot be decoded raises :class:`CorruptSample`; the pipeline skips it and counts it.
"""
from __future__ import annotations

import io
import json
from typing import Callable, Dict, Optional

import torch
from PIL import Image

from clipkit.config.schema import SampleKeysConfig


class CorruptSample(Exception):
    pass


def _first_member(sample: Dict[str, object], extensions) -> Optional[str]:
    return next((ext for ext in extensions if ext in sample), None)


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # force the full decode here, so truncated files fail now
    return image.convert("RGB")


def decode_caption(ext: str, data: bytes, caption_field: str) -> str:
    text = data.decode("utf-8")
    if ext == "json":
        value = json.loads(text)
        if not isinstance(value, dict) or not isinstance(value.get(caption_field), str):
            raise ValueError(f"json member has no string field '{caption_field}'")
        text = value[caption_field]
    return text.strip()


class ImageLoader:
    """bytes -> preprocessed image tensor."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(decode_image(data))


class SampleDecoder:
    """Decodes the modalities a model uses; absent ones are simply not in the output."""

    def __init__(self, keys: SampleKeysConfig, image_transform: Optional[Callable] = None,
                 tokenizer: Optional[Callable] = None, audio_loader: Optional[Callable] = None) -> None:
        self.keys = keys
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.audio_loader = audio_loader

    def __call__(self, sample: Dict[str, object]) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        key = sample.get("__key__", "?")
        try:
            if self.image_transform is not None:
                ext = _first_member(sample, self.keys.image)
                if ext is not None:
                    out["image"] = self.image_transform(decode_image(sample[ext]))
            if self.tokenizer is not None:
                ext = _first_member(sample, self.keys.text)
                if ext is not None:
                    caption = decode_caption(ext, sample[ext], self.keys.caption_field)
                    if not caption:
                        raise ValueError("empty caption")
                    out["text"] = self.tokenizer([caption])[0]
            if self.audio_loader is not None:
                ext = _first_member(sample, self.keys.audio)
                if ext is not None:
                    out["audio"] = self.audio_loader(sample[ext])
        except Exception as exc:  # any decoder failure means this one sample is unusable
            raise CorruptSample(f"sample {key} in {sample.get('__url__', '?')}: {exc}") from exc
        if not out:
            raise CorruptSample(f"sample {key} in {sample.get('__url__', '?')} has none of the "
                                f"configured members ({', '.join(k for k in sample if not k.startswith('__'))})")
        return out
