"""open_clip's model zoo by name: an architecture of ``open_clip.list_models()`` as clipkit tower
configs, or the reason clipkit cannot build it.

open_clip describes each architecture with a ``vision_cfg`` and a ``text_cfg``; clipkit's ViT, timm,
ResNet and text towers wrap the same open_clip modules, so a supported architecture maps field by
field, and a field whose value clipkit could not honour refuses the architecture instead of
building something else under its name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

import open_clip
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT
from clipkit.models.towers.image import ResNetConfig, TimmConfig, ViTConfig
from clipkit.models.towers.text import TextTransformerConfig

# Top-level keys of open_clip's model configs that carry no tower shape: custom_text is a layout of
# open_clip's module tree (clipkit's is always per tower); init_logit_scale and init_logit_bias are
# initial values, which model.init_logit_scale and loss.sigmoid.init_bias set.
_IGNORED_TOP = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "custom_text",
    "init_logit_scale",
    "init_logit_bias",
}

_VIT_FIELDS = (
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "ls_init_value",
    "patch_dropout",
    "pool_type",
    "final_ln_after_pool",
    "no_ln_pre",
    "attentional_pool",
    "attn_pooler_queries",
    "attn_pooler_heads",
)
_TIMM_FIELDS = {
    "timm_model_name": "model_name",
    "timm_pool": "pool",
    "timm_proj": "proj",
    "timm_proj_bias": "proj_bias",
    "timm_drop": "drop",
    "timm_drop_path": "drop_path",
    "image_size": "image_size",
    "patch_dropout": "patch_dropout",
}
_RESNET_FIELDS = ("layers", "width", "head_width", "image_size")
_TEXT_FIELDS = (
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "ls_init_value",
    "pool_type",
    "proj_bias",
    "no_causal_mask",
)
# Fields that only matter to a tower kind clipkit does not take from this config (timm's fields
# for a ViT, the ViT's for timm), or that the caption head sets when it needs tokens.
_VISION_INERT = {"output_tokens", "timm_model_pretrained", "patch_size"}


class ArchRefused(Exception):
    """open_clip names the architecture, but clipkit cannot build it as open_clip would."""


@dataclass(frozen=True)
class ArchTowers:
    embed_dim: int
    image: Any  # ViTConfig | TimmConfig | ResNetConfig
    text: TextTransformerConfig

    def as_model_node(self, name: str) -> dict[str, Any]:
        """The ``model`` config values this architecture sets (every field of each tower, so any
        of them can be overridden as ``model.towers.image.FIELD=...``)."""
        return {
            "arch": name,
            "embed_dim": self.embed_dim,
            "towers": {IMAGE: asdict(self.image), TEXT: asdict(self.text)},
        }


def _differing(cfg: Any, mapped: Any) -> str | None:
    """The first field of an open_clip tower config set away from open_clip's default that is
    neither mapped nor inert."""
    for item in fields(cfg):
        if item.name in mapped or item.name in _VISION_INERT:
            continue
        if getattr(cfg, item.name) != getattr(type(cfg)(), item.name):
            return item.name
    return None


def _image_tower(vision: CLIPVisionCfg, quick_gelu: bool) -> Any:
    if vision.timm_model_name:
        unmapped = _differing(vision, _TIMM_FIELDS)
        if unmapped:
            raise ArchRefused(f"its timm image tower sets vision_cfg.{unmapped}, which clipkit's timm tower lacks")
        values = {ours: getattr(vision, theirs) for theirs, ours in _TIMM_FIELDS.items()}
        values["proj"] = values["proj"] or "none"
        return TimmConfig(**values)
    if isinstance(vision.layers, (list, tuple)):
        unmapped = _differing(vision, _RESNET_FIELDS)
        if unmapped:
            raise ArchRefused(f"its ResNet image tower sets vision_cfg.{unmapped}, which clipkit's ResNet lacks")
        return ResNetConfig(
            layers=list(vision.layers), width=vision.width, head_width=vision.head_width, image_size=vision.image_size
        )
    unmapped = _differing(vision, _VIT_FIELDS)
    if unmapped:
        raise ArchRefused(f"its ViT sets vision_cfg.{unmapped}, which clipkit's ViT tower lacks")
    if not isinstance(vision.image_size, int):
        raise ArchRefused(f"its ViT takes non-square images ({vision.image_size})")
    return ViTConfig(**{name: getattr(vision, name) for name in _VIT_FIELDS}, quick_gelu=quick_gelu)


def _text_tower(text: CLIPTextCfg, quick_gelu: bool) -> TextTransformerConfig:
    if text.hf_model_name:
        raise ArchRefused(
            f"its text tower is the Hugging Face model '{text.hf_model_name}', which "
            "clipkit does not build (it would be fetched from the hub)"
        )
    if text.hf_tokenizer_name:
        raise ArchRefused(
            f"it tokenizes with the Hugging Face tokenizer '{text.hf_tokenizer_name}'; "
            "clipkit tokenizes with open_clip's bundled CLIP BPE, which works offline"
        )
    unmapped = _differing(text, _TEXT_FIELDS)
    if unmapped:
        raise ArchRefused(f"its text tower sets text_cfg.{unmapped}, which clipkit's text tower lacks")
    return TextTransformerConfig(**{name: getattr(text, name) for name in _TEXT_FIELDS}, quick_gelu=quick_gelu)


@cache
def arch_towers(name: str) -> ArchTowers:
    """clipkit's tower configs for open_clip's architecture ``name``; raises ArchRefused (with the
    reason) for one clipkit cannot build, KeyError for a name open_clip does not know."""
    config = open_clip.get_model_config(name)
    if config is None:
        raise KeyError(name)
    return towers_from_model_config(config)


def towers_from_model_config(config: dict[str, Any]) -> ArchTowers:
    """clipkit's tower configs for an open_clip ``model_cfg`` (a zoo entry, or the one in a
    local-dir folder's open_clip_config.json); raises ArchRefused."""
    if "multimodal_cfg" in config:
        raise ArchRefused(
            "it is a CoCa (open_clip's multimodal_cfg); clipkit's caption decoder "
            "(model.caption, see model=tiny_coca) is configured separately"
        )
    extra = sorted(set(config) - _IGNORED_TOP)
    if extra:
        raise ArchRefused(f"its config sets {extra[0]}, which clipkit has no counterpart for")
    quick_gelu = bool(config.get("quick_gelu", False))
    return ArchTowers(
        embed_dim=config["embed_dim"],
        image=_image_tower(CLIPVisionCfg(**config["vision_cfg"]), quick_gelu),
        text=_text_tower(CLIPTextCfg(**config["text_cfg"]), quick_gelu),
    )


def zoo() -> dict[str, Any]:
    """Every name of ``open_clip.list_models()``: its ArchTowers, or the ArchRefused saying why not."""
    entries: dict[str, Any] = {}
    for name in open_clip.list_models():
        try:
            entries[name] = arch_towers(name)
        except ArchRefused as refused:
            entries[name] = refused
    return entries
