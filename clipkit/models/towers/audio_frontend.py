"""Log-mel front end of the audio towers: waveform -> normalised log-mel spectrogram, on the device.

torchaudio computes the mel filterbank; SpecAugment masks (time and frequency) apply in training only.
"""

from __future__ import annotations

import torch
import torchaudio.transforms as AT
from torch import nn


class LogMelFrontend(nn.Module):
    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        f_min: float,
        f_max: float | None,
        log_offset: float,
        norm: str,
        norm_mean: float,
        norm_std: float,
        freq_mask: int,
        time_mask: int,
        num_masks: int,
    ) -> None:
        super().__init__()
        self.mel = AT.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            power=2.0,
        )
        self.log_offset = log_offset
        self.norm = norm
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        masks = []
        for _ in range(num_masks):
            if freq_mask > 0:
                masks.append(AT.FrequencyMasking(freq_mask, iid_masks=True))
            if time_mask > 0:
                masks.append(AT.TimeMasking(time_mask, iid_masks=True))
        self.spec_augment = nn.Sequential(*masks)

    def frames(self, samples: int) -> int:
        return samples // self.mel.hop_length + 1  # centred STFT

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 1, n_mels, frames)."""
        with torch.autocast(device_type=wave.device.type, enabled=False):  # the STFT wants fp32
            spec = torch.log(self.mel(wave.float()) + self.log_offset)
        if self.norm == "instance":
            mean = spec.mean(dim=(-2, -1), keepdim=True)
            std = spec.std(dim=(-2, -1), keepdim=True)
            spec = (spec - mean) / (std + 1e-5)
        else:
            spec = (spec - self.norm_mean) / self.norm_std
        spec = spec.unsqueeze(1)
        if self.training and len(self.spec_augment):
            spec = self.spec_augment(spec)  # a different mask for every example
        return spec
