"""Text tower: open_clip's TextTransformer, fed by open_clip's bundled (offline) BPE tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from clipkit.config.checks import one_of
from clipkit.models.towers.base import TOWERS, Tower, TowerConfig, finish_tower, heads_divide, shared_fields


@dataclass
class TextTransformerConfig(TowerConfig):
    MODALITY: ClassVar[str] = "text"

    name: str = "transformer"
    context_length: int = 77
    vocab_size: int = 49408  # open_clip's BPE vocabulary
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    pool_type: str = "argmax"  # argmax (end-of-text token, as CLIP) | first | last
    proj_bias: bool = False
    no_causal_mask: bool = False  # every token attends to every other (MobileCLIP's text towers)
    quick_gelu: bool = False  # OpenAI's CLIP activation instead of GELU (open_clip's `quick_gelu`)
    unlocked_layers: int = 0  # with `lock`, the last N layers stay trainable
    freeze_layer_norm: bool = True

    def lock_encoder(self, encoder: nn.Module) -> None:
        encoder.lock(unlocked_layers=self.unlocked_layers, freeze_layer_norm=self.freeze_layer_norm)

    def open_clip_cfg(self) -> CLIPTextCfg:
        return CLIPTextCfg(**shared_fields(self, CLIPTextCfg))

    def check(self, key: str, embed_dim: int) -> None:
        heads_divide(f"{key}.width", self.width, self.heads, f"{key}.heads")
        one_of(f"{key}.pool_type", self.pool_type, ("argmax", "first", "last"))


@TOWERS.register("transformer", TextTransformerConfig)
def build_text_transformer(cfg: TextTransformerConfig, embed_dim: int) -> Tower:
    encoder = _build_text_tower(embed_dim, cfg.open_clip_cfg(), quick_gelu=cfg.quick_gelu)
    return finish_tower(encoder, cfg, token_width=cfg.width)


def build_tokenizer(cfg: TextTransformerConfig) -> SimpleTokenizer:
    """open_clip's CLIP tokenizer, which ships its vocabulary and so works offline."""
    return SimpleTokenizer(context_length=cfg.context_length)
