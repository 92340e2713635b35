"""Builds the model together with what feeds it: tokenizer and image transforms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipkit.config.schema import LossConfig, ModelConfig
from clipkit.config.validate import CheckedConfig
from clipkit.data.audio import AudioLoader
from clipkit.data.decode import ImageLoader
from clipkit.data.device_decode import DeviceImages
from clipkit.data.image_crop import ImageNormalizer
from clipkit.data.transforms import build_eval_image_transform, build_train_image_loader
from clipkit.models.multimodal import MultiModalModel, PairParameters, build_model
from clipkit.models.towers.text import build_tokenizer


@dataclass
class ModelBundle:
    """The model and what turns raw sample members into its inputs (None: no such tower)."""

    model: MultiModalModel
    tokenizer: Callable | None
    train_image_loader: Callable[[bytes], torch.Tensor] | None  # uint8 crops, normalised on device
    eval_image_transform: Callable | None
    train_audio_loader: Callable | None
    eval_audio_loader: Callable | None
    input_shapes: dict[str, tuple[int, ...]]  # one sample's input, per modality
    input_dtypes: dict[str, torch.dtype]
    # per modality, what turns a training batch's rows into model inputs on the training device; it
    # clears the rows it cannot decode in the host mask it gets (has_<modality>) and says how many
    on_device: dict[str, Callable[[object, torch.Tensor], tuple[torch.Tensor, int]]]

    def eval_loaders(self) -> dict[str, Callable[[bytes], torch.Tensor]]:
        """Per modality the model encodes (text aside): a sample member's bytes -> eval input."""
        loaders: dict[str, Callable[[bytes], torch.Tensor]] = {}
        if self.eval_image_transform is not None:
            loaders["image"] = ImageLoader(self.eval_image_transform)
        if self.eval_audio_loader is not None:
            loaders["audio"] = self.eval_audio_loader
        return loaders

    def empty_inputs(self, modality: str, rows: int) -> torch.Tensor:
        """Zeros standing in for a modality that no row of a batch carries."""
        return torch.zeros((rows, *self.input_shapes[modality]), dtype=self.input_dtypes[modality])


def pair_parameters(model: ModelConfig, loss: LossConfig) -> PairParameters:
    """The per-pair parameters that the configured loss terms need."""
    needed = {"contrastive_scale": None}  # PairParameters' defaults are InfoNCE's: off unless a term asks
    for term in loss.pair_terms().values():
        if term.weight > 0:
            needed.update(term.pair_parameters(model.init_logit_scale))
    return PairParameters(**needed, max_logit_scale=model.max_logit_scale)


def build_bundle(checked: CheckedConfig, device: torch.device) -> ModelBundle:
    cfg = checked.cfg
    model = build_model(
        cfg.model.embed_dim, checked.towers, cfg.model.pairs, pair_parameters(cfg.model, cfg.loss), cfg.model.caption
    ).to(device)
    image = checked.towers.get("image")
    text = checked.towers.get("text")
    audio = checked.towers.get("audio")
    return ModelBundle(
        model=model,
        tokenizer=build_tokenizer(text) if text is not None else None,
        train_image_loader=build_train_image_loader(cfg.data.image, image.image_size, cfg.data.decode_device)
        if image
        else None,
        eval_image_transform=build_eval_image_transform(cfg.data.image, image.image_size) if image else None,
        train_audio_loader=AudioLoader(audio.sample_rate, audio.clip_samples, train=True) if audio else None,
        eval_audio_loader=AudioLoader(audio.sample_rate, audio.clip_samples, train=False) if audio else None,
        input_shapes={
            **({"image": (3, image.image_size, image.image_size)} if image else {}),
            **({"text": (text.context_length,)} if text else {}),
            **({"audio": (audio.clip_samples,)} if audio else {}),
        },
        input_dtypes={"image": torch.float32, "text": torch.long, "audio": torch.float32},
        on_device={
            "image": DeviceImages(image.image_size, ImageNormalizer(cfg.data.image.mean, cfg.data.image.std), device)
        }
        if image
        else {},
    )
