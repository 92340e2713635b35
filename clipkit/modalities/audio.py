"""The audio modality's spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit.data.audio import AudioLoader
from clipkit.modalities.base import MODALITIES, ModalityFeed, ModalitySpec

if TYPE_CHECKING:
    from clipkit.config.schema import DataConfig
    from clipkit.models.towers.audio import AudioTowerConfig


AUDIO = "audio"  # the modality's name: model.towers.audio, data.keys.audio, ...


@MODALITIES.register(AUDIO)
class AudioSpec(ModalitySpec):
    """Mono waveforms at the tower's rate: random crops of its clip length for training, centre
    crops for evaluation (a shorter clip repeats); decoded in the data workers."""

    eval_members = ("flac", "wav", "mp3", "ogg")

    def feed(self, tower: AudioTowerConfig, data: DataConfig, device: torch.device) -> ModalityFeed:
        rate, samples = tower.sample_rate, tower.clip_samples
        train, evaluation = (AudioLoader(rate, samples, train=training) for training in (True, False))
        note = f"mono float32 at {rate} Hz, centre-cropped or repeat-padded to {samples} samples"
        return ModalityFeed((samples,), torch.float32, train, evaluation, preprocessing=note)

    def signature(self, tower: AudioTowerConfig, data: DataConfig) -> tuple:
        return (tower.sample_rate, tower.clip_samples)
