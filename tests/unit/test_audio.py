import io
import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.transforms as AT

from clipkit.config.schema import SampleKeysConfig
from clipkit.data.audio import AudioLoader, decode_audio, fit_length
from clipkit.data.decode import CorruptSample, SampleDecoder
from clipkit.models.towers import TOWERS
from clipkit.models.towers.audio import AudioCNNConfig, SpectrogramTransformerConfig

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def encoded(ext, wave, rate):
    buffer = io.BytesIO()
    fmt, subtype = FORMATS[ext]
    soundfile.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tone(freq, rate, seconds, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def dominant_frequency(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("ext", list(FORMATS))
def test_each_format_decodes_to_mono_at_the_target_rate(tmp_path, ext):
    path = tmp_path / f"tone.{ext}"
    path.write_bytes(encoded(ext, tone(440, 44100, 1.0, channels=2), 44100))
    wave = decode_audio(path.read_bytes(), 16000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1200  # lossy codecs pad a little
    assert abs(dominant_frequency(wave, 16000) - 440) < 5  # resampled, not just relabelled


def test_stereo_is_down_mixed():
    left = tone(300, 16000, 0.5)
    stereo = np.stack([left, -left], axis=1)  # opposite phases cancel in the mean
    assert decode_audio(encoded("wav", stereo, 16000), 16000).abs().max() < 1e-3


def test_long_clips_are_cropped_and_short_ones_repeat_padded():
    wave = torch.arange(10, dtype=torch.float32)
    assert torch.equal(fit_length(wave, 4, random_crop=False), torch.tensor([3.0, 4, 5, 6]))  # centre
    torch.manual_seed(0)
    crop = fit_length(wave, 4, random_crop=True)
    assert crop[1:].sub(crop[:-1]).eq(1).all()  # a contiguous window
    short = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(fit_length(short, 8, random_crop=True), torch.tensor([1.0, 2, 3, 1, 2, 3, 0, 0]))


def test_corrupt_or_empty_audio_is_a_corrupt_sample():
    decoder = SampleDecoder(SampleKeysConfig(), {"audio": AudioLoader(16000, 8000, train=False)})
    with pytest.raises(CorruptSample):
        decoder({"__key__": "x", "flac": b"not audio"})
    with pytest.raises(CorruptSample):
        decoder({"__key__": "y", "wav": encoded("wav", np.zeros(0, dtype=np.float32), 16000)})
    assert decoder({"__key__": "z", "wav": encoded("wav", tone(200, 16000, 0.2), 16000)})["audio"].shape == (8000,)


def test_front_end_matches_torchaudio_reference():
    cfg = AudioCNNConfig(
        sample_rate=16000,
        clip_seconds=0.5,
        n_fft=512,
        hop_length=128,
        n_mels=40,
        f_min=50.0,
        f_max=7000.0,
        log_offset=1e-4,
        norm="fixed",
        norm_mean=-3.0,
        norm_std=2.0,
    )
    frontend = cfg.frontend().eval()
    wave = torch.randn(2, cfg.clip_samples)
    reference = AT.MelSpectrogram(
        sample_rate=16000, n_fft=512, hop_length=128, n_mels=40, f_min=50.0, f_max=7000.0, power=2.0
    )(wave)
    expected = ((torch.log(reference + 1e-4) + 3.0) / 2.0).unsqueeze(1)
    assert torch.allclose(frontend(wave), expected, atol=1e-5)
    assert frontend(wave).shape == (2, 1, 40, frontend.frames(cfg.clip_samples))


def test_spec_augment_masks_in_training_only():
    cfg = AudioCNNConfig(clip_seconds=0.5, n_mels=32, freq_mask=8, time_mask=10, num_masks=2)
    frontend = cfg.frontend()
    wave = torch.randn(4, cfg.clip_samples)
    plain = frontend.eval()(wave)
    torch.manual_seed(0)
    masked = frontend.train()(wave)
    assert torch.equal(frontend.eval()(wave), plain)
    assert (masked == 0).sum() > 0 and not torch.equal(masked, plain)


@pytest.mark.parametrize(
    "cfg",
    [
        SpectrogramTransformerConfig(
            clip_seconds=0.5, n_mels=32, patch_size=16, patch_stride=10, width=32, layers=1, heads=2
        ),
        AudioCNNConfig(clip_seconds=0.5, n_mels=32, channels=[8, 16]),
    ],
)
def test_audio_towers_embed_waveforms_and_lock(cfg):
    tower = TOWERS.get(cfg.name).build(cfg, 24)
    out = tower(torch.randn(3, cfg.clip_samples))
    assert out.shape == (3, 24)
    out.sum().backward()
    locked = TOWERS.get(cfg.name).build(type(cfg)(**{**cfg.__dict__, "lock": True}), 24)
    assert not any(p.requires_grad for p in locked.parameters())


def test_overlapping_patches_make_a_finer_grid():
    common = dict(clip_seconds=1.0, n_mels=64, patch_size=16, width=32, layers=1, heads=2)
    plain = TOWERS.get("ast").build(SpectrogramTransformerConfig(**common, patch_stride=16), 8)
    overlapping = TOWERS.get("ast").build(SpectrogramTransformerConfig(**common, patch_stride=10), 8)
    frames = 16000 // 160 + 1
    assert plain.encoder.backbone.patch_embed.grid_size == (4, frames // 16)
    assert overlapping.encoder.backbone.patch_embed.grid_size == ((64 - 16) // 10 + 1, (frames - 16) // 10 + 1)
    assert math.prod(overlapping.encoder.backbone.patch_embed.grid_size) > math.prod(
        plain.encoder.backbone.patch_embed.grid_size
    )
