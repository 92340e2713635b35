"""Layer-wise learning-rate decay (``optim.layer_decay.<modality>``), BEiT's rule per tower.

A tower of L blocks is numbered 0 (its stem: patch or token embedding, class token, positional
embedding, pre-norm), 1..L (its blocks, in order) and L+1 (what follows: final norm, pooling,
projection). A parameter of layer i trains at ``optim.lr * decay ** (L + 1 - i)``: the projection
at the full rate, each block below a factor ``decay`` slower, the stem slowest. Parameters outside
the towers (logit scales, a caption decoder) train at the full rate.

Blocks are found by name, which covers every tower clipkit builds: open_clip's transformers
(``transformer.resblocks.N``), its ResNet (``layerN``), timm trunks (``blocks.N``, ``stages.N``;
a stage counts as one layer) and clipkit's audio towers (``blocks.N``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from clipkit.errors import ConfigError


@dataclass
class LayerDecayConfig:
    """Per tower: a tower's block i of L trains at lr * decay ** (L + 1 - i); 1: off. Fine-tuning
    values: 0.65-0.85."""

    image: float = 1.0
    text: float = 1.0
    audio: float = 1.0

    def check(self, key: str) -> None:
        for modality, decay in vars(self).items():
            if not 0.0 < decay <= 1.0:
                raise ConfigError(f"{key}.{modality}", f"must lie in (0, 1] (1: off), got {decay}")


_BLOCK = re.compile(r"^(?:transformer\.resblocks|blocks|layers|stages)\.(\d+)\.")
_RESNET_STAGE = re.compile(r"^layer(\d+)\.")  # open_clip's ModifiedResNet: layer1..layer4
_WRAPPERS = ("trunk.", "backbone.")  # timm's trunk under open_clip's TimmModel; the AST's backbone
_STEM = (
    "conv1.",
    "conv2.",
    "conv3.",
    "bn1.",
    "bn2.",
    "bn3.",
    "class_embedding",
    "positional_embedding",
    "ln_pre.",
    "token_embedding.",
    "cls_emb",
    "cls_token",
    "reg_token",
    "pos_embed",
    "patch_embed.",
    "stem.",
)


def _block(name: str) -> int | None:
    match = _BLOCK.match(name)
    if match:
        return int(match.group(1))
    match = _RESNET_STAGE.match(name)
    return int(match.group(1)) - 1 if match else None


def _unwrapped(name: str) -> str:
    for wrapper in _WRAPPERS:
        if name.startswith(wrapper):
            return name[len(wrapper) :]
    return name


def layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter name of a tower's encoder -> its layer (0: stem, 1..L: blocks, L+1: head),
    and L+1."""
    names = [name for name, _ in encoder.named_parameters()]
    blocks = {name: _block(_unwrapped(name)) for name in names}
    depth = max((b for b in blocks.values() if b is not None), default=-1) + 1
    if depth == 0:
        raise ConfigError("optim.layer_decay", f"{type(encoder).__name__} has no numbered blocks to decay over")
    return {
        name: (blocks[name] + 1 if blocks[name] is not None else 0 if _unwrapped(name).startswith(_STEM) else depth + 1)
        for name in names
    }, depth + 1


def lr_scales(model: nn.Module, decays: dict[str, float]) -> dict[str, float]:
    """Parameter name (in ``model``) -> its learning-rate factor, for the towers whose decay is
    below 1; every other parameter is absent (factor 1)."""
    scales: dict[str, float] = {}
    for modality, decay in decays.items():
        if decay == 1.0 or modality not in model.towers:
            continue
        ids, top = layer_ids(model.towers[modality].encoder)
        for name, layer in ids.items():
            scales[f"towers.{modality}.encoder.{name}"] = decay ** (top - layer)
    return scales
