"""Text tower: open_clip's TextTransformer, fed by open_clip's bundled (offline) BPE tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
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

    @property
    def padding_is_inert(self) -> bool:
        """Whether the padding after a caption changes nothing the tower computes, so that it can
        be cut: with the causal mask no token sees a later one, and the end-of-text (argmax) or
        first token pooled lies before the padding."""
        return not self.no_causal_mask and self.pool_type in ("argmax", "first")


def _causal_mask_for_length(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """open_clip 3.3's TextTransformer hands its transformer the causal mask of the whole context
    whatever the length of the tokens (its main branch cuts it, as here): cut to the length, so
    batches of captions shorter than the context (data.text_pad_multiple) can be encoded."""
    mask: torch.Tensor | None = kwargs.get("attn_mask")
    length = args[0].shape[1]  # (batch, length, width): open_clip's towers are batch-first
    if mask is not None and mask.shape[-1] != length:
        kwargs = {**kwargs, "attn_mask": mask[..., :length, :length]}
    return args, kwargs


@TOWERS.register("transformer", TextTransformerConfig)
def build_text_transformer(cfg: TextTransformerConfig, embed_dim: int) -> Tower:
    encoder = _build_text_tower(embed_dim, cfg.open_clip_cfg(), quick_gelu=cfg.quick_gelu)
    encoder.transformer.register_forward_pre_hook(_causal_mask_for_length, with_kwargs=True)
    return finish_tower(encoder, cfg, token_width=cfg.width)


def build_tokenizer(cfg: TextTransformerConfig) -> SimpleTokenizer:
    """open_clip's CLIP tokenizer, which ships its vocabulary and so works offline."""
    return SimpleTokenizer(context_length=cfg.context_length)
