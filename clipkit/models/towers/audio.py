"""Audio towers: waveform -> log-mel (on the device) -> backbone -> projection to embed_dim.

``ast``: a timm VisionTransformer with one input channel over the non-square mel x time patch grid
(AST / ImageBind style), with optionally overlapping patches. ``cnn``: a small CNN (PANNs-style
conv blocks, mean over frequency, mean + max over time) with GroupNorm rather than PANNs'
BatchNorm: an embedding must not depend on which rows share its (masked, accumulated, per-process)
batch, or the contrastive gradients stop being those of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipkit.config.checks import one_of
from clipkit.models.towers.audio_frontend import LogMelFrontend
from clipkit.models.towers.base import TOWERS, Tower, TowerConfig, finish_tower, heads_divide


@dataclass
class AudioTowerConfig(TowerConfig):
    MODALITY: ClassVar[str] = "audio"

    sample_rate: int = 16000
    clip_seconds: float = 10.0  # every clip is cropped or padded to this length
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    log_offset: float = 1e-6
    norm: str = "instance"  # instance (per clip) | fixed (norm_mean / norm_std)
    norm_mean: float = 0.0
    norm_std: float = 1.0
    freq_mask: int = 0  # SpecAugment, training only: widest frequency mask in mel bins (0: off)
    time_mask: int = 0  # widest time mask in frames (0: off)
    num_masks: int = 2

    def check(self, key: str, embed_dim: int) -> None:
        one_of(f"{key}.norm", self.norm, ("instance", "fixed"))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def frontend(self) -> LogMelFrontend:
        return LogMelFrontend(
            self.sample_rate,
            self.n_fft,
            self.hop_length,
            self.n_mels,
            self.f_min,
            self.f_max,
            self.log_offset,
            self.norm,
            self.norm_mean,
            self.norm_std,
            self.freq_mask,
            self.time_mask,
            self.num_masks,
        )


@dataclass
class SpectrogramTransformerConfig(AudioTowerConfig):
    name: str = "ast"
    patch_size: int = 16
    patch_stride: int = 16  # < patch_size: overlapping patches, as AST (16 / 10)
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    pool: str = "token"  # token | avg
    drop_path: float = 0.0

    def check(self, key: str, embed_dim: int) -> None:
        super().check(key, embed_dim)
        heads_divide(f"{key}.width", self.width, self.heads, f"{key}.heads")
        one_of(f"{key}.pool", self.pool, ("token", "avg"))


@dataclass
class AudioCNNConfig(AudioTowerConfig):
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])


class StridedPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with a stride of its own, so patches may overlap."""

    def __init__(self, *args, stride: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proj = nn.Conv2d(self.proj.in_channels, self.proj.out_channels, self.patch_size, stride=stride)
        self.grid_size = tuple((s - p) // stride + 1 for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]


class AudioEncoder(nn.Module):
    """Front end, backbone (pooled features of size ``width``) and a linear projection.

    The backbone has timm's interface: ``forward_features`` (a CNN's (B, C, F, T) map or a ViT's
    (B, N, C) tokens) and ``forward_head(x, pre_logits=True)`` (pooled features)."""

    def __init__(self, frontend: LogMelFrontend, backbone: nn.Module, width: int, embed_dim: int) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = backbone
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.output_tokens = False  # also return token features, as open_clip's towers do

    # The wave stays fp32 for the front end's STFT (FSDP casts no input of this encoder); the
    # spectrogram goes on in the weights' dtype (bf16 where FSDP gathers them so, without autocast).
    casts_own_input = True

    def forward(self, wave: torch.Tensor):
        features = self.backbone.forward_features(self.frontend(wave).to(self.proj.weight.dtype))
        embedding = self.proj(self.backbone.forward_head(features, pre_logits=True))
        if not self.output_tokens:
            return embedding
        if features.ndim == 4:  # one token per cell of the CNN's map
            tokens = features.flatten(2).transpose(1, 2)
        else:
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0) :]
        return embedding, tokens

    def compile(self, *args, **kwargs) -> None:  # type: ignore[override]
        """torch.compile the backbone's feature extractor; the log-mel front end stays eager: its
        STFT is complex-valued, which inductor generates no code for, and compiled into one graph
        with the backbone under bf16 autocast it gave NaN losses (seen with torch 2.11)."""
        self.backbone.forward_features = torch.compile(self.backbone.forward_features, *args, **kwargs)

    def lock(self) -> None:
        for param in self.parameters():
            param.requires_grad = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


class AudioCNN(nn.Module):
    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        blocks, previous = [], 1
        for width in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, padding=1, bias=False),
                    nn.GroupNorm(min(8, width), width),
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.GroupNorm(min(8, width), width),
                    nn.ReLU(),
                    nn.AvgPool2d(2),
                )
            )
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        x = spec
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        x = x.mean(dim=2)  # over frequency
        return x.mean(dim=-1) + x.amax(dim=-1)  # over time


@TOWERS.register("ast", SpectrogramTransformerConfig)
def build_spectrogram_transformer(cfg: SpectrogramTransformerConfig, embed_dim: int) -> Tower:
    frontend = cfg.frontend()
    grid = (cfg.n_mels, frontend.frames(cfg.clip_samples))
    backbone = VisionTransformer(
        img_size=grid,
        patch_size=cfg.patch_size,
        in_chans=1,
        num_classes=0,
        global_pool=cfg.pool,
        embed_dim=cfg.width,
        depth=cfg.layers,
        num_heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=cfg.drop_path,
        embed_layer=partial(StridedPatchEmbed, stride=cfg.patch_stride),
    )
    return finish_tower(AudioEncoder(frontend, backbone, cfg.width, embed_dim), cfg, token_width=cfg.width)


@TOWERS.register("cnn", AudioCNNConfig)
def build_audio_cnn(cfg: AudioCNNConfig, embed_dim: int) -> Tower:
    width = cfg.channels[-1]
    return finish_tower(AudioEncoder(cfg.frontend(), AudioCNN(cfg.channels), width, embed_dim), cfg, token_width=width)
