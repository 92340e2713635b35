"""Audio: mono waveforms at the tower's rate, random crops of its clip length for training and
centre crops for evaluation (shorter clips repeat)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from clipkit.data.audio import AudioLoader
from clipkit.modalities.base import MODALITIES, ModalityFeed, ModalitySpec

if TYPE_CHECKING:
    from clipkit.config.schema import DataConfig
    from clipkit.models.towers.audio import AudioTowerConfig


@MODALITIES.register("audio")
class AudioSpec(ModalitySpec):
    eval_members = ("flac", "wav", "mp3", "ogg")

    def feed(self, tower: AudioTowerConfig, data: DataConfig, device: torch.device) -> ModalityFeed:
        rate, samples = tower.sample_rate, tower.clip_samples
        return ModalityFeed(
            input_shape=(samples,),
            dtype=torch.float32,
            train_loader=AudioLoader(rate, samples, train=True),
            eval_loader=AudioLoader(rate, samples, train=False),
            preprocessing=f"mono float32 at {rate} Hz, centre-cropped or repeat-padded to {samples} samples",
        )

    def signature(self, tower: AudioTowerConfig, data: DataConfig) -> tuple:
        return (tower.sample_rate, tower.clip_samples)
