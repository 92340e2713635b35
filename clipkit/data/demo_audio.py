"""Synthetic sounds with captions for the demo: timbre, pitch, rhythm, loudness, pitch contour.

"three short high beeps", "a long quiet low buzz slowly rising": every word is audible, so an
audio tower can learn them from the captions alone.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import soundfile

SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
TIMBRES = ("beep", "buzz", "rasp", "hiss")  # sine, square, sawtooth, noise
PITCHES = {"low": (180.0, 260.0), "high": (900.0, 1300.0)}  # Hz (noise: band centre)
COUNTS = ("one", "two", "three", "long")
CONTOURS = ("steady", "rising", "falling")
LOUDNESS = {"quiet": 0.08, "loud": 0.5}
PLURAL = {"beep": "beeps", "buzz": "buzzes", "rasp": "rasps", "hiss": "hisses"}


@dataclass(frozen=True)
class Sound:
    timbre: str
    pitch: str
    count: str
    loudness: str
    contour: str = "steady"  # long sounds only

    def captions(self) -> list[str]:
        """Three phrasings: full, without loudness, and 'the sound of ...'."""
        if self.count == "long":
            tail = {"steady": "", "rising": " slowly rising", "falling": " slowly falling"}[self.contour]
            return [
                f"a long {self.loudness} {self.pitch} {self.timbre}{tail}",
                f"a long {self.pitch} {self.timbre}{tail}",
                f"the sound of a {self.loudness} {self.pitch} {self.timbre}{tail}",
            ]
        noun = self.timbre if self.count == "one" else PLURAL[self.timbre]
        article = "a" if self.count == "one" else self.count
        return [
            f"{article} short {self.loudness} {self.pitch} {noun}",
            f"{article} {self.pitch} {noun}",
            f"the sound of {article} short {self.pitch} {noun}",
        ]


def random_sound(rng: random.Random, timbre: str = "", pitch: str = "") -> Sound:
    count = rng.choice(COUNTS)
    return Sound(
        timbre or rng.choice(TIMBRES),
        pitch or rng.choice(list(PITCHES)),
        count,
        rng.choice(list(LOUDNESS)),
        rng.choice(CONTOURS) if count == "long" else "steady",
    )


def _oscillator(timbre: str, freq: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    if timbre == "beep":
        return np.sin(phase)
    if timbre == "buzz":
        return np.sign(np.sin(phase))
    if timbre == "rasp":
        return 2 * ((phase / (2 * np.pi)) % 1.0) - 1
    noise = rng.standard_normal(n)  # hiss: noise in a band around the pitch
    spectrum = np.fft.rfft(noise)
    bins = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    centre = float(freq.mean())
    spectrum[(bins < centre * 0.5) | (bins > centre * 2.0)] = 0
    band = np.fft.irfft(spectrum, n)
    return band / (np.abs(band).max() + 1e-9)


def render(sound: Sound, rng: random.Random) -> np.ndarray:
    n = int(SAMPLE_RATE * CLIP_SECONDS)
    generator = np.random.default_rng(rng.getrandbits(32))
    base = rng.uniform(*PITCHES[sound.pitch])
    ramp = np.linspace(0, 1, n)
    factor = {"steady": np.ones(n), "rising": 1 + 0.8 * ramp, "falling": 1.8 - 0.8 * ramp}[sound.contour]
    tone = _oscillator(sound.timbre, base * factor, generator, n)
    envelope = np.zeros(n)
    if sound.count == "long":
        envelope[int(0.05 * n) : int(0.95 * n)] = 1.0
    else:
        pulses = COUNTS.index(sound.count) + 1
        length = int(0.12 * n)
        for i in range(pulses):
            start = int((0.08 + 0.3 * i) * n)
            envelope[start : start + length] = 1.0
    wave = LOUDNESS[sound.loudness] * tone * envelope
    wave += 0.005 * generator.standard_normal(n)  # a faint noise floor
    return wave.astype(np.float32)


def encode_flac(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
