"""What every tower shares: its config fields, its wrapper, and loading local weights."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from clipkit.errors import CheckpointError, ConfigError
from clipkit.registry import Registry


@dataclass
class TowerConfig:
    MODALITY: ClassVar[str] = ""  # the modality the tower encodes; a key of model.towers

    name: str = ""
    lock: bool = False  # freeze the tower (LiT-style); see each tower for partial unlocking
    grad_checkpointing: bool = False
    weights: str | None = None  # local state dict (.safetensors or torch file) for this tower

    def lock_encoder(self, encoder: nn.Module) -> None:
        """Freezes ``encoder`` as ``lock`` asks; towers with partial unlocking override this."""
        encoder.lock()

    def check(self, key: str, embed_dim: int) -> None:
        """Relations between the tower's fields (and the model's ``embed_dim``, which it projects
        to) that its builder would otherwise assert deep inside; ``key``: where the tower sits,
        e.g. model.towers.image. The sizes and counts themselves are checked for every tower alike."""


def heads_divide(key: str, width: int, heads: int, source: str) -> None:
    """Attention splits the width ``key`` names evenly over ``heads`` (``source``: what sets them)."""
    if heads < 1 or width % heads:
        raise ConfigError(key, f"{width} does not split evenly into {heads} attention heads ({source})")


class Tower(nn.Module):
    """One modality's encoder: input batch -> embedding of size ``embed_dim`` (not normalised).

    ``encoder`` is the library module doing the work (an open_clip tower), kept as is so its
    weights map one to one onto open_clip's layout. ``token_width`` is the width of the token
    features it can also return (None: it has none), which a caption decoder attends to;
    ``tokens_pooled``: they are already pooled by attention (open_clip's CoCa image tower).
    """

    def __init__(
        self,
        modality: str,
        encoder: nn.Module,
        config: TowerConfig,
        token_width: int | None = None,
        tokens_pooled: bool = False,
    ) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = encoder
        self.config = config
        self.token_width = token_width
        self.tokens_pooled = tokens_pooled
        self.returns_tokens = False  # forward_with_tokens is on (enable_tokens)

    def enable_tokens(self) -> int:
        """From now on the encoder also returns its token features; returns their width."""
        if self.token_width is None:
            raise ConfigError(
                "model.caption.sources",
                f"the '{self.config.name}' {self.modality} tower gives no token features to caption from",
            )
        self.encoder.output_tokens = True
        self.returns_tokens = True
        return self.token_width

    def no_weight_decay(self) -> set[str]:
        """The parameters trained without weight decay: every tensor of fewer than 2 dimensions
        (biases, norm gains, class tokens), as open_clip_train does. Token and positional
        embeddings are decayed, as there: with benchmarks/parity_open_clip.py (5 seeds, digits),
        exempting them gave acc1 0.903 with a 0.219 spread over seeds (one seed collapsed),
        decaying them 0.938 with a 0.022 spread."""
        return below_two_dimensions(self)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.encoder(inputs)
        return out[0] if isinstance(out, tuple) else out

    def forward_with_tokens(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B, embed_dim), token features (B, T, token_width)); needs enable_tokens."""
        embedding, tokens = self.encoder(inputs)
        return embedding, tokens


TOWERS: Registry[Tower] = Registry("tower")


def shared_fields(cfg: TowerConfig, target: type) -> dict[str, Any]:
    """The fields of ``cfg`` that the dataclass ``target`` (open_clip's tower config) has too: a
    clipkit tower config names each open_clip setting it exposes as open_clip does."""
    ours = {f.name for f in fields(cfg)}
    return {f.name: getattr(cfg, f.name) for f in fields(target) if f.name in ours}


def below_two_dimensions(module: nn.Module) -> set[str]:
    return {name for name, param in module.named_parameters() if param.ndim < 2}


def finish_tower(
    encoder: nn.Module, cfg: TowerConfig, token_width: int | None = None, tokens_pooled: bool = False
) -> Tower:
    """What every tower's builder ends with: its weights file loaded, locked if asked, gradient
    checkpointing set, and the encoder wrapped."""
    if cfg.weights:
        load_weights(encoder, cfg.weights)
    if cfg.lock:
        cfg.lock_encoder(encoder)
    encoder.set_grad_checkpointing(cfg.grad_checkpointing)
    return Tower(cfg.MODALITY, encoder, cfg, token_width, tokens_pooled)


def read_state_dict(path: str) -> dict:
    """A state dict from a .safetensors file or a torch checkpoint (optionally under 'state_dict')."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"weights file not found: {file}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure means the file is unusable
        raise CheckpointError(f"cannot read weights file {file}: {exc}") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_weights(module: nn.Module, path: str) -> None:
    state = read_state_dict(path)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise CheckpointError(
            f"weights file {path} does not fit {type(module).__name__}: "
            f"{str(exc).strip().splitlines()[-1].strip()[:200]}"
        ) from None
    if unexpected or len(missing) == len(list(module.state_dict())):
        raise CheckpointError(
            f"weights file {path} does not fit {type(module).__name__}: "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(missing)} missing"
        )
