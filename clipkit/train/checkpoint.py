"""Checkpoints: ``checkpoints/step_NNNNNNN/{model.safetensors, train_state.pt, config.yaml}``.

A checkpoint is written into a hidden temporary folder, flushed to disk, renamed into place, and
only then named by ``checkpoints/latest``. A run killed at any moment therefore leaves either the
previous complete checkpoint or the new complete one; temporary folders are never picked.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clipkit.data.write import fsync_tree
from clipkit.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
REQUIRED = (MODEL_FILE, STATE_FILE, CONFIG_FILE)
STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(folder: Path) -> bool:
    return STEP_DIR.match(folder.name) is not None and all((folder / f).is_file() for f in REQUIRED)


def complete_checkpoints(ckpt_root: Path) -> List[Path]:
    """Complete step folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def save_checkpoint(ckpt_root: Path, step: int, model_state: Dict[str, torch.Tensor], train_state: Dict[str, Any],
                    config_yaml: str, keep_last_k: int) -> Path:
    """``model_state``: the full (unsharded) weights by name."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=ckpt_root))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(tensors, str(staging / MODEL_FILE))
        torch.save(train_state, staging / STATE_FILE)
        (staging / CONFIG_FILE).write_text(config_yaml)
        fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. a re-run of a finished run)
            shutil.rmtree(final)
        staging.rename(final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = ckpt_root / ".latest.tmp"
    pointer.write_text(final.name + "\n")
    with open(pointer, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(pointer, ckpt_root / "latest")
    _fsync_dir(ckpt_root)
    for old in complete_checkpoints(ckpt_root)[:-keep_last_k] if keep_last_k > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest(ckpt_root: Path) -> Optional[Path]:
    """The folder ``latest`` names if complete, else the newest complete one, else None."""
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        named = ckpt_root / pointer.read_text().strip()
        if is_complete(named):
            return named
        log.warning("checkpoints/latest names %s, which is not a complete checkpoint; "
                    "looking for the newest complete one", named.name)
    complete = complete_checkpoints(ckpt_root)
    return complete[-1] if complete else None


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint folder, or a run folder (its latest complete checkpoint)."""
    folder = Path(path).expanduser()
    if (folder / "checkpoints").is_dir():
        latest = find_latest(folder / "checkpoints")
        if latest is None:
            raise CheckpointError(f"no complete checkpoint under {folder / 'checkpoints'}")
        return latest
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {folder}")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a complete checkpoint (missing {', '.join(missing)})")
    return folder


def load_model_weights(model: nn.Module, folder: Path,
                       load: Optional[Callable[[nn.Module, Dict[str, torch.Tensor]], Any]] = None) -> None:
    """The checkpoint's weights into ``model``, all keys matching; ``load`` puts a full state
    dict into the model (default: ``load_state_dict``; the trainer's also fills FSDP shards)."""
    try:
        state = load_file(str(folder / MODEL_FILE))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"unreadable checkpoint {folder / MODEL_FILE}: {exc}") from exc
    try:
        if load is None:
            model.load_state_dict(state, strict=True)
        else:
            load(model, state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"checkpoint {folder} does not fit the configured model: "
                              f"{' '.join(first[:2])[:300]}") from exc


def load_train_state(folder: Path) -> Dict[str, Any]:
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint {folder / STATE_FILE}: {exc}") from exc
