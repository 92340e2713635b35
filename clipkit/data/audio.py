"""Audio samples: decode (libsndfile via soundfile), down-mix, resample, fit to a fixed length."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg")


def decode_audio(data: bytes, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform at ``sample_rate`` from the bytes of a flac|wav|mp3|ogg file."""
    frames, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if frames.shape[0] == 0:
        raise ValueError("empty audio")
    wave = torch.from_numpy(np.ascontiguousarray(frames.mean(axis=1)))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def fit_length(wave: torch.Tensor, length: int, random_crop: bool) -> torch.Tensor:
    """Exactly ``length`` samples. Longer: a random window (training; torch's RNG, which the
    DataLoader seeds per worker) or the centre one (evaluation). Shorter: repeated whole, then
    zero-padded (CLAP's repeat-pad)."""
    n = wave.shape[0]
    if n >= length:
        start = int(torch.randint(0, n - length + 1, ())) if random_crop else (n - length) // 2
        return wave[start : start + length]
    repeated = wave.repeat(length // n)
    return torch.nn.functional.pad(repeated, (0, length - repeated.shape[0]))


@dataclass
class AudioLoader:
    """bytes -> fixed-length mono waveform, as the audio tower expects it."""

    sample_rate: int
    clip_samples: int
    train: bool

    def __call__(self, data: bytes) -> torch.Tensor:
        return fit_length(decode_audio(data, self.sample_rate), self.clip_samples, self.train)
