"""Starting a new run from a clipkit checkpoint's weights (``model.init.clipkit=PATH``).

Unlike ``trainer.resume``, which carries on a run (its optimizer, schedule, step and data position),
this takes only weights, into a run of its own: a fine-tune on other data, a longer schedule, a
model with a new tower beside trained ones. The weights are the ones the checkpoint's evaluation and
export use (its moving average where the run kept one), from either layout. Per tower taken
(``model.init.towers``; by default every tower of this model that the checkpoint has) every tensor
must come from the checkpoint with its exact shape; the parameters of a pair (logit scale, SigLIP
scale and bias) come with its two towers, and the caption decoder with the towers it reads. What
the checkpoint lacks of those (a pair or term it did not train, no decoder) keeps its own start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from clipkit.errors import CheckpointError
from clipkit.models.multimodal import MultiModalModel
from clipkit.pairs import split_pair
from clipkit.train import checkpoint as ckpt

log = logging.getLogger(__name__)

KEY = "model.init.clipkit"
_PER_PAIR = ("logit_scales", "sigmoid_scales", "sigmoid_biases")


def _towers_of(state: dict[str, torch.Tensor]) -> set[str]:
    return {key.split(".")[1] for key in state if key.startswith("towers.")}


def _taken_by(key: str, towers: set[str], caption_reads: set[str]) -> bool:
    """Whether the model's tensor ``key`` comes with the towers taken."""
    part, _, rest = key.partition(".")
    if part == "towers":
        return rest.partition(".")[0] in towers
    if part in _PER_PAIR:
        return set(split_pair(rest.partition(".")[0])) <= towers
    if part == "caption":
        return caption_reads <= towers
    return False


def init_checkpoint(path: str) -> Path:
    """The complete checkpoint ``path`` names (a checkpoint or run folder), readable here."""
    try:
        folder = ckpt.resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{KEY}: {exc}") from None
    ckpt.require_its_plugins(folder)
    return folder


def load_clipkit_init(model: MultiModalModel, path: str, towers: Sequence[str] | None = None) -> None:
    """Copies the weights of the clipkit checkpoint at ``path`` (a checkpoint or run folder) into
    ``model`` for ``towers`` (None: every tower the two share) and what comes with them. Raises
    CheckpointError naming the first tensor of those towers that is missing, left over or of another
    shape."""
    folder = init_checkpoint(path)
    state = ckpt.read_model_state(folder)
    saved = _towers_of(state)
    taken = list(towers) if towers is not None else [m for m in model.towers if m in saved]
    absent = [m for m in taken if m not in model.towers or m not in saved]
    if absent or not taken:
        raise CheckpointError(
            f"model.init.towers: {', '.join(absent) or 'no tower'} to take from {folder}, which has the "
            f"tower(s) {', '.join(sorted(saved))}; this model has {', '.join(model.towers)}"
        )
    caption_reads = {"text", *model.caption.sources} if model.caption is not None else set()
    own = model.state_dict()
    extra = [k for k in state if k.startswith(tuple(f"towers.{m}." for m in taken)) and k not in own]
    if extra:
        tower = extra[0].split(".")[1]
        raise CheckpointError(f"{KEY}: {folder} has {extra[0]}, which this model's {tower} tower has no place for")
    wanted = [key for key in own if _taken_by(key, set(taken), caption_reads)]
    loaded: dict[str, torch.Tensor] = {}
    kept: set[str] = set()
    for key in wanted:
        if key not in state:
            if key.startswith("towers."):
                tower = key.split(".")[1]
                raise CheckpointError(f"{KEY}: {folder} lacks {key}: its {tower} tower is another architecture")
            kept.add(key.partition(".")[0] if key.startswith("caption.") else key)
            continue
        value, target = state[key], own[key]
        if value.numel() == target.numel() == 1:
            value = value.reshape(target.shape)  # per-pair values saved as scalars by older runs
        if value.shape != target.shape:
            shapes = f"{list(value.shape)}, this model's {list(target.shape)}"
            raise CheckpointError(f"{KEY}: {folder}: {key} has shape {shapes}")
        loaded[key] = value
    model.load_state_dict(loaded, strict=False)
    if kept:
        log.info("%s: the checkpoint has no %s; they keep their own start", KEY, ", ".join(sorted(kept)))
    log.info("%s: took the %s tower(s) from %s", KEY, ", ".join(taken), folder)
