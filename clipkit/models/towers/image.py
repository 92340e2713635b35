"""Image towers: open_clip's VisionTransformer at any size, and any timm backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import timm
import torch
from omegaconf import MISSING
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import nn

from clipkit.config.checks import did_you_mean, one_of
from clipkit.errors import ConfigError
from clipkit.models.towers.base import (
    TOWERS,
    Tower,
    TowerConfig,
    finish_tower,
    heads_divide,
    load_weights,
    shared_fields,
)


@dataclass
class ImageTowerConfig(TowerConfig):
    MODALITY: ClassVar[str] = "image"

    image_size: int = 224
    unlocked_groups: int = 0  # with `lock`, the last N layer groups stay trainable
    freeze_bn_stats: bool = False

    def lock_encoder(self, encoder: nn.Module) -> None:
        encoder.lock(unlocked_groups=self.unlocked_groups, freeze_bn_stats=self.freeze_bn_stats)


@dataclass
class ViTConfig(ImageTowerConfig):
    name: str = "vit"
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    patch_dropout: float = 0.0
    pool_type: str = "tok"  # tok | avg
    final_ln_after_pool: bool = False
    no_ln_pre: bool = False
    # open_clip's CoCa image tower: the tokens are pooled by attention to this many queries of
    # embed_dim width (what a caption decoder attends to), the first query is the embedding.
    attentional_pool: bool = False
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    # OpenAI's CLIP activation (x * sigmoid(1.702 x)) instead of GELU, as open_clip's `quick_gelu`
    # models (the OpenAI weights were trained with it)
    quick_gelu: bool = False

    def open_clip_cfg(self) -> CLIPVisionCfg:
        return CLIPVisionCfg(**shared_fields(self, CLIPVisionCfg))

    def check(self, key: str, embed_dim: int) -> None:
        heads = self.width // self.head_width  # open_clip's VisionTransformer
        source = f"{key}.width // {key}.head_width = {self.width} // {self.head_width}"
        heads_divide(f"{key}.width", self.width, heads, source)
        one_of(f"{key}.pool_type", self.pool_type, ("tok", "avg"))
        if self.attentional_pool:  # its queries are embed_dim wide
            heads_divide("model.embed_dim", embed_dim, self.attn_pooler_heads, f"{key}.attn_pooler_heads")


@dataclass
class TimmConfig(ImageTowerConfig):
    name: str = "timm"
    model_name: str = MISSING  # any timm model name, e.g. resnet50, vit_small_patch16_224
    pool: str = "avg"  # avg | abs_attn | rot_attn | '' (the model's own pooling)
    proj: str = "linear"  # linear | mlp | none
    proj_bias: bool = False
    drop: float = 0.0
    drop_path: float | None = None
    patch_dropout: float = 0.0
    trunk_weights: str | None = None  # a local timm checkpoint for the backbone alone

    def open_clip_cfg(self) -> CLIPVisionCfg:
        return CLIPVisionCfg(
            image_size=self.image_size,
            patch_dropout=self.patch_dropout,
            timm_model_name=self.model_name,
            timm_model_pretrained=False,
            timm_pool=self.pool,
            timm_proj="" if self.proj == "none" else self.proj,
            timm_proj_bias=self.proj_bias,
            timm_drop=self.drop,
            timm_drop_path=self.drop_path,
        )

    def check(self, key: str, embed_dim: int) -> None:
        one_of(f"{key}.proj", self.proj, ("linear", "mlp", "none"))
        if ":" not in self.model_name and not timm.is_model(self.model_name):  # hf-hub:..., local-dir:... pass
            raise ConfigError(
                f"{key}.model_name",
                f"'{self.model_name}' is not a timm model{did_you_mean(self.model_name, timm.list_models())}",
            )


@dataclass
class ResNetConfig(ImageTowerConfig):
    """OpenAI's CLIP ResNet (open_clip's ModifiedResNet: attention pooling, anti-aliased strides)."""

    name: str = "resnet"
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])  # blocks per stage (RN50)
    width: int = 64  # of the stem; the stages are 1, 2, 4 and 8 times as wide (x4 channels)
    head_width: int = 64  # the attention pool's heads: width * 32 / head_width

    def open_clip_cfg(self) -> CLIPVisionCfg:
        return CLIPVisionCfg(
            layers=tuple(self.layers), width=self.width, head_width=self.head_width, image_size=self.image_size
        )

    def check(self, key: str, embed_dim: int) -> None:
        pool_width = self.width * 32  # the last stage's channels, which the attention pool splits
        source = f"{key}.width * 32 // {key}.head_width = {pool_width} // {self.head_width}"
        heads_divide(f"{key}.head_width", pool_width, pool_width // self.head_width, source)


@TOWERS.register("vit", ViTConfig)
def build_vit(cfg: ViTConfig, embed_dim: int) -> Tower:
    encoder = _build_vision_tower(embed_dim, cfg.open_clip_cfg(), quick_gelu=cfg.quick_gelu)
    if cfg.attentional_pool:
        return finish_tower(encoder, cfg, embed_dim, tokens_pooled=True)
    return finish_tower(encoder, cfg, cfg.width)


@TOWERS.register("timm", TimmConfig)
def build_timm(cfg: TimmConfig, embed_dim: int) -> Tower:
    _check_input_size(cfg)
    try:
        encoder = _build_vision_tower(embed_dim, cfg.open_clip_cfg())
    except AssertionError as exc:  # the pool: timm's names depend on the model, attention pools need a 2-D map
        why = str(exc) or "attention pooling needs a 2-D feature map"
        message = f"'{cfg.pool}' does not fit timm's {cfg.model_name}: {why}"
        raise ConfigError("model.towers.image.pool", message) from None
    if cfg.trunk_weights:
        load_weights(encoder.trunk, cfg.trunk_weights)
    return finish_tower(encoder, cfg, None)  # open_clip's timm wrapper gives no tokens


def _check_input_size(cfg: TimmConfig) -> None:
    """Some timm backbones take one input size only, fixed when built (a ViT's patch embedding;
    open_clip builds them at their default), and assert it at the first forward. A forward on the
    meta device (no memory, no compute) finds that before training starts."""
    if ":" in cfg.model_name:  # hf-hub:..., local-dir:...: resolved by timm when the tower is built
        return
    with torch.device("meta"):
        trunk = timm.create_model(cfg.model_name, pretrained=False)
        try:
            trunk.forward_features(torch.empty(1, 3, cfg.image_size, cfg.image_size))
        except AssertionError as exc:  # timm's own shape checks
            raise ConfigError(
                "model.towers.image.image_size",
                f"{cfg.image_size} px inputs do not fit timm's {cfg.model_name} ({exc}); "
                "set the size it was made for, or pick a timm model made for this one",
            ) from None
        except Exception:  # an operator without a meta kernel: the first real forward will tell
            pass


@TOWERS.register("resnet", ResNetConfig)
def build_resnet(cfg: ResNetConfig, embed_dim: int) -> Tower:
    if cfg.grad_checkpointing:
        raise ConfigError("model.towers.image.grad_checkpointing", "open_clip's ResNet has no gradient checkpointing")
    return finish_tower(_build_vision_tower(embed_dim, cfg.open_clip_cfg()), cfg, None)
