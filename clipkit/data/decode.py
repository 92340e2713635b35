"""Turning a raw webdataset sample (bytes per member) into model inputs, one modality at a time.

A sample that cannot be decoded raises :class:`CorruptSample`; the pipeline skips it and counts it.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from clipkit.data.negatives import NegativeCaptions
from clipkit.data.text_length import used_length
from clipkit.data.weighted import weighted_order
from clipkit.errors import ConfigError


@dataclass
class SampleKeysConfig:
    """Which file extensions in a webdataset sample carry which modality."""

    image: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    text: list[str] = field(default_factory=lambda: ["txt", "json"])
    audio: list[str] = field(default_factory=lambda: ["flac", "wav", "mp3", "ogg"])
    # The field of a `json` member holding the caption, or a list of fields (say, the alt text and
    # recaptions): the first non-empty one in the list's order is taken (open_clip_train's
    # --json-text-key), or with `caption_field_weights` in an order drawn per sample
    caption_field: Any = "caption"
    # One weight per field (open_clip_train's --json-text-key-probs): a sample's fields are ordered
    # by a draw in proportion to them, those of weight 0 last, and the first non-empty one is taken
    caption_field_weights: list[float] | None = None

    @property
    def caption_fields(self) -> list[str]:
        return list(self.caption_field) if isinstance(self.caption_field, (list, tuple)) else [self.caption_field]

    def check(self, key: str) -> None:
        fields = self.caption_fields
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ConfigError(
                f"{key}.caption_field", f"needs a field name or a list of them, got {self.caption_field!r}"
            )
        weights = self.caption_field_weights
        if weights is not None and (len(weights) != len(fields) or min(weights) < 0 or not sum(weights) > 0):
            raise ConfigError(
                f"{key}.caption_field_weights",
                f"needs one weight >= 0 per caption field ({len(fields)}), not all 0, got {weights}",
            )


class CorruptSample(Exception):
    pass


def _name(sample: dict[str, object]) -> str:
    return f"{sample.get('__key__', '?')} in {sample.get('__url__', '?')}"


@contextlib.contextmanager
def _corrupt_on_error(sample: dict[str, object]) -> Iterator[None]:
    """Any decoder failure means this one sample is unusable: a :class:`CorruptSample` naming it."""
    try:
        yield
    except Exception as exc:
        raise CorruptSample(f"sample {_name(sample)}: {exc}") from exc


def _first_member(sample: dict[str, object], extensions) -> str | None:
    return next((ext for ext in extensions if ext in sample), None)


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # force the full decode here, so truncated files fail now
    return image.convert("RGB")


def decode_caption(ext: str, data: bytes, fields: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """A ``txt`` member's text, or from a ``json`` member the first non-empty string among
    ``fields``, taken in their order or, with ``weights``, in one drawn from Python's generator
    (which the pipeline seeds per sample)."""
    text = data.decode("utf-8")
    if ext != "json":
        return text.strip()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("json member is not an object")
    order = fields if weights is None else [fields[i] for i in weighted_order(weights, random.random)]
    for name in order:
        caption = value.get(name)
        if isinstance(caption, str) and caption.strip():
            return caption.strip()
    raise ValueError(f"json member has no non-empty string field {' or '.join(repr(f) for f in fields)}")


class ImageLoader:
    """bytes -> preprocessed image tensor."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(decode_image(data))


@dataclass
class SampleDecoder:
    """Decodes the modalities a model uses; absent ones are simply not in the output. Captions stay
    strings until :meth:`collate` tokenises a batch's in one call."""

    keys: SampleKeysConfig
    loaders: dict[str, Callable[[bytes], object]]  # per modality other than text: member bytes -> row
    tokenizer: Callable | None = None  # None: no text
    negatives: NegativeCaptions | None = None  # hard-negative captions (loss.contrastive.hard_negatives)
    text_pad_multiple: int | None = None  # cut a batch's tokens after its longest caption (clipkit.data.text_length)

    def __call__(self, sample: dict[str, object]) -> dict[str, object]:
        return self.combine(sample, self.members(sample), self.caption(sample))

    def members(self, sample: dict[str, object]) -> dict[str, object]:
        """The rows of every modality but text (images, sounds) that the sample has."""
        out: dict[str, object] = {}
        with _corrupt_on_error(sample):
            for modality, loader in self.loaders.items():
                ext = _first_member(sample, getattr(self.keys, modality))
                if ext is not None:
                    out[modality] = loader(sample[ext])
        return out

    def caption(self, sample: dict[str, object]) -> dict[str, object]:
        """The sample's caption (``text``) and its hard negatives, if it has one."""
        out: dict[str, object] = {}
        ext = _first_member(sample, self.keys.text) if self.tokenizer is not None else None
        if ext is None:
            return out
        with _corrupt_on_error(sample):
            caption = decode_caption(ext, sample[ext], self.keys.caption_fields, self.keys.caption_field_weights)
            if not caption:
                raise ValueError("empty caption")
            out["text"] = caption
            if self.negatives is not None:
                out["text_negatives"] = self.negatives(sample, caption)
        return out

    @staticmethod
    def combine(sample: dict[str, object], members: dict[str, object], caption: dict[str, object]) -> dict:
        """A decoded sample from its parts; one with none of the configured members is corrupt."""
        if not members and not caption:
            raise CorruptSample(
                f"sample {_name(sample)} has none of the "
                f"configured members ({', '.join(k for k in sample if not k.startswith('__'))})"
            )
        return {**members, **caption}

    def collate(self, samples: list[dict[str, object]]) -> dict:
        """Decoded samples -> a batch: per modality the stacked rows (zeros where a row lacks it;
        a loader with a ``collate`` of its own makes its modality's) and the row mask
        ``has_<modality>``, for every modality the decoder reads."""
        batch: dict = {"num_rows": len(samples)}
        modalities = [*self.loaders, *(["text"] if self.tokenizer is not None else [])]
        for modality in modalities:
            rows = [s.get(modality) for s in samples]
            present = torch.tensor([r is not None for r in rows])
            batch[f"has_{modality}"] = present
            if not present.any():
                continue
            if modality == "text":
                tokens = self.tokenizer([r for r in rows if r is not None])
                batch["text"] = torch.zeros((len(rows), tokens.shape[1]), dtype=tokens.dtype)
                batch["text"][present] = tokens
            elif hasattr(self.loaders[modality], "collate"):
                batch[modality] = self.loaders[modality].collate(rows)
            else:
                template = next(r for r in rows if r is not None)
                batch[modality] = torch.stack([r if r is not None else torch.zeros_like(template) for r in rows])
        if self.negatives is not None:
            self._collate_negatives(samples, batch)
        if self.text_pad_multiple is not None:
            self._cut_padding(batch)
        return batch

    def _cut_padding(self, batch: dict) -> None:
        """The captions and their hard negatives, encoded in one call, cut to one length."""
        token_keys = [key for key in ("text", "text_negatives") if key in batch]
        if not token_keys:
            return
        length = max(used_length(batch[key], self.text_pad_multiple) for key in token_keys)
        for key in token_keys:
            batch[key] = batch[key][..., :length].contiguous()

    def _collate_negatives(self, samples: list[dict[str, object]], batch: dict) -> None:
        """``text_negatives`` (rows x k x context tokens) and ``has_text_negatives`` (rows x k), also
        when no row has one (every process then makes the same collective calls), and
        ``rows_with_negatives``."""
        k = self.negatives.k
        found = [s.get("text_negatives", []) for s in samples]
        present = torch.tensor([[j < len(f) for j in range(k)] for f in found], dtype=torch.bool)
        texts = [caption for f in found for caption in f]
        negatives = torch.zeros((len(samples), k, self.tokenizer.context_length), dtype=torch.long)
        if texts:
            negatives[present] = self.tokenizer(texts)
        batch["text_negatives"], batch["has_text_negatives"] = negatives, present
        batch["rows_with_negatives"] = int(present.any(dim=1).sum())
