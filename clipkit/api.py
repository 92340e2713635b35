"""Python API: a trained clipkit model with its tokenizer and preprocessing.

    import clipkit
    model = clipkit.load("runs/demo/<date_time>")          # a run folder or a checkpoint folder
    images = model.encode_image([PIL.Image.open("cat.png")])
    texts = model.encode_text(["a photo of a cat", "a photo of a dog"])
    probs = (100 * images @ texts.T).softmax(dim=-1)

Every ``encode_*`` returns L2-normalised embeddings (N, embed_dim), computed without gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from PIL import Image

from clipkit.config.validate import CheckedConfig
from clipkit.data.audio import fit_length
from clipkit.data.text_length import inert_multiple, tokenize
from clipkit.eval.zeroshot import zero_shot_classifier
from clipkit.modalities.audio import AUDIO
from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT
from clipkit.models.multimodal import MultiModalModel
from clipkit.saved import load_checkpoint

Images = Image.Image | Sequence[Image.Image] | torch.Tensor
Texts = str | Sequence[str] | torch.Tensor
Waveforms = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


@dataclass
class ClipkitModel:
    model: MultiModalModel
    tokenizer: Callable | None
    preprocess_image: Callable | None  # PIL image -> (3, H, W) tensor, as evaluation does
    sample_rate: int | None  # the audio tower's rate and clip length (samples)
    clip_samples: int | None
    config: CheckedConfig
    device: torch.device
    # strings' tokens are cut after the longest, rounded up to this multiple, where the text tower
    # allows it (eval.text_pad_multiple; clipkit.data.text_length): the same embeddings, sooner
    text_pad_multiple: int | None = None

    def _tower(self, modality: str) -> None:
        if modality not in self.model.towers:
            raise ValueError(f"this model has no {modality} tower (towers: {', '.join(self.model.modalities)})")

    @torch.no_grad()
    def encode_image(self, images: Images) -> torch.Tensor:
        """PIL images (one or a list), or a preprocessed (N, 3, H, W) batch."""
        self._tower(IMAGE)
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, torch.Tensor):
            images = torch.stack([self.preprocess_image(image.convert("RGB")) for image in images])
        return self.model.encode(IMAGE, images.to(self.device)).float()

    @torch.no_grad()
    def encode_text(self, texts: Texts) -> torch.Tensor:
        """Strings (one or a list), or a tokenized (N, context_length) batch."""
        self._tower(TEXT)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, torch.Tensor):
            texts = self._tokenize(list(texts))
        return self.model.encode(TEXT, texts.to(self.device)).float()

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts, self.text_pad_multiple)

    @torch.no_grad()
    def encode_audio(self, waveforms: Waveforms, sample_rate: int | None = None) -> torch.Tensor:
        """Waveforms at ``sample_rate`` (default: the tower's): one (T,) array or tensor, an
        (N, T) batch, or a list of (T,) or (channels, T) ones. Each is down-mixed, resampled and
        centre-cropped or repeat-padded to the tower's clip length, as in evaluation."""
        self._tower(AUDIO)
        if isinstance(waveforms, (np.ndarray, torch.Tensor)) and np.ndim(waveforms) == 1:
            waveforms = [waveforms]
        clips = [
            self._audio_clip(torch.as_tensor(w, dtype=torch.float32), sample_rate or self.sample_rate)
            for w in waveforms
        ]
        return self.model.encode(AUDIO, torch.stack(clips).to(self.device)).float()

    def _audio_clip(self, wave: torch.Tensor, rate: int) -> torch.Tensor:
        if wave.ndim == 2:
            wave = wave.mean(dim=0)
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        return fit_length(wave, self.clip_samples, random_crop=False)

    @torch.no_grad()
    def zero_shot_classifier(self, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """(embed_dim, classes): per class the normalised mean of its templates' text embeddings
        (each template with a ``{c}`` placeholder); ``embeddings @ classifier`` gives the logits."""
        return zero_shot_classifier(
            lambda tokens: self.encode_text(tokens), self._tokenize, classnames, templates, self.device
        )


def load(path: str, device: str | torch.device = "cpu", overrides: Sequence[str] = ()) -> ClipkitModel:
    """A checkpoint folder or a run folder (its latest checkpoint), ready to embed."""
    device = torch.device(device)
    _, checked, bundle = load_checkpoint(path, device, overrides)
    audio = checked.towers.get(AUDIO)
    images = bundle.feeds.get(IMAGE)
    return ClipkitModel(
        model=bundle.model,
        tokenizer=bundle.tokenizer,
        preprocess_image=images.eval_loader.transform if images else None,
        sample_rate=audio.sample_rate if audio else None,
        clip_samples=audio.clip_samples if audio else None,
        config=checked,
        device=device,
        text_pad_multiple=inert_multiple(checked.cfg.eval.text_pad_multiple, checked.towers.get(TEXT)),
    )
