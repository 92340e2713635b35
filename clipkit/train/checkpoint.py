"""Checkpoint folders on disk: ``checkpoints/step_NNNNNNN/`` and ``checkpoints/latest``.

Every step folder holds ``config.yaml``, ``train_state.pt`` (the host state: progress, scheduler,
scaler, per-process RNG and data position) and a ``manifest.json`` (every other file with its size
and SHA-256, the layout, the number of processes, the step). The weights and optimizer state are
either

- ``full``: ``model.safetensors`` (the whole weights), the optimizer inside ``train_state.pt``, and
  with ``trainer.ema`` the weights' moving average in ``ema.safetensors``; or
- ``sharded``: ``shards/``, written by every process through ``torch.distributed.checkpoint``
  (FSDP runs), the moving average with it; any number of processes can read it back, and one
  process consolidates it on CPU.

A folder is written under a hidden name, flushed to disk, given its manifest, renamed into place,
and only then named by ``latest``. A run killed at any moment therefore leaves either the previous
complete checkpoint or the new complete one; hidden folders are never picked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from clipkit.atomic import publish_folder, replace_file
from clipkit.errors import CheckpointError
from clipkit.plugins import loaded_plugins, require_plugins

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # the weights' moving average (trainer.ema), full layout
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"  # beside the step folders: names the newest complete one
SHARDS_DIR = "shards"
LAYOUTS = ("full", "sharded")
_LEGACY_REQUIRED = (MODEL_FILE, STATE_FILE, CONFIG_FILE)  # folders written before manifests
STEP_DIR = re.compile(r"^step_(\d{7,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def staging_dir(ckpt_root: Path, step: int) -> Path:
    """Where the folder of ``step`` is written before it is published: the same name in every
    process, which all write into it under the sharded layout."""
    return ckpt_root / f".{step_dir_name(step)}.partial"


def clear_staging(ckpt_root: Path) -> None:
    """Removes what killed runs left half-written."""
    for leftover in ckpt_root.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def publish(
    staging: Path, step: int, layout: str, world_size: int, keep_last_k: int, keep_every_n_steps: int = 0
) -> Path:
    """Seals a fully written staging folder: manifest, flush, rename to ``step_NNNNNNN``, point
    ``latest`` at it, and drop all but the newest ``keep_last_k`` complete folders, and those at a
    multiple of ``keep_every_n_steps``."""
    root = staging.parent
    final = root / step_dir_name(step)
    files = {
        name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)} for name in _files(staging)
    }
    manifest = {
        "format": 1,
        "step": step,
        "layout": layout,
        "world_size": world_size,
        "plugins": loaded_plugins(),  # needed to rebuild the model and config from this folder
        "files": files,
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    publish_folder(staging, final)  # replaces the same step saved before (e.g. a re-run of a finished run)
    replace_file(root / LATEST_FILE, final.name + "\n")
    for old in complete_checkpoints(root)[:-keep_last_k] if keep_last_k > 0 else []:
        if not (keep_every_n_steps and checkpoint_step(old) % keep_every_n_steps == 0):
            shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------ reading
def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest; for a folder from before manifests (the three files of the full
    layout, no manifest), one that lists those files without checksums; None if neither."""
    path = folder / MANIFEST_FILE
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("layout") in LAYOUTS and isinstance(manifest.get("files"), dict):
                return manifest
        except (OSError, ValueError):
            pass
        return None
    if all((folder / f).is_file() for f in _LEGACY_REQUIRED):
        return {"layout": "full", "world_size": None, "files": {f: {} for f in _LEGACY_REQUIRED}}
    return None


def problem(folder: Path, checksums: bool = False) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint (None if it is): no manifest, a listed
    file missing or of another size, or (``checksums``) of other contents."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{folder} is not a complete checkpoint (no valid {MANIFEST_FILE})"
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{folder} is not a complete checkpoint (missing {name})"
        if "bytes" in expected and path.stat().st_size != expected["bytes"]:
            return f"{path} is damaged: {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if checksums and "sha256" in expected and _sha256(path) != expected["sha256"]:
            return f"{path} is damaged: its SHA-256 differs from the manifest's"
    return None


def is_complete(folder: Path) -> bool:
    return STEP_DIR.match(folder.name) is not None and problem(folder) is None


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete step folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_latest(ckpt_root: Path, checksums: bool = False) -> Path | None:
    """The folder ``latest`` names if complete, else the newest complete one, else None. With
    ``checksums``, a folder whose files do not match their checksums is passed over (with a
    warning) for the next older one."""
    candidates = complete_checkpoints(ckpt_root)[::-1]
    pointer = ckpt_root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_bytes()[:100].decode("utf-8", "replace").strip()
        named = ckpt_root / name
        if STEP_DIR.match(name) and named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
        else:
            log.warning(
                "checkpoints/latest names %r, which is not a complete checkpoint; looking for the newest complete one",
                name,
            )
    for folder in candidates:
        damage = problem(folder, checksums) if checksums else None
        if damage is None:
            return folder
        log.warning("%s; trying an older checkpoint", damage)
    return None


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
    damage = problem(folder)
    if damage is not None:
        raise CheckpointError(damage)
    return folder


def require_its_plugins(folder: Path) -> None:
    """The plugin modules the checkpoint was written with (its manifest's list) are loaded here."""
    require_plugins((read_manifest(folder) or {}).get("plugins", []), folder)


def layout(folder: Path) -> str:
    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(problem(folder) or f"{folder} is not a checkpoint")
    return manifest["layout"]


def checkpoint_step(folder: Path) -> int:
    manifest = read_manifest(folder) or {}
    return int(manifest["step"]) if "step" in manifest else int(load_train_state(folder).get("step", 0))


def has_ema(folder: Path) -> bool:
    """Whether the checkpoint holds a moving average of the weights: ``ema.safetensors``, or in a
    sharded checkpoint ``ema`` entries beside the weights' shards."""
    if (folder / EMA_FILE).is_file():
        return True
    manifest = read_manifest(folder)
    if manifest is None or manifest["layout"] != "sharded":
        return False
    from clipkit.train.sharded import has_saved_average

    try:
        return has_saved_average(folder / SHARDS_DIR)
    except Exception as exc:  # DCP raises several types for damaged files
        raise CheckpointError(f"unreadable checkpoint {folder / SHARDS_DIR}: {exc}") from exc


def read_model_state(folder: Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """The whole weights by name, on CPU, whatever the layout (sharded ones are consolidated):
    their moving average where the checkpoint has one and ``ema``, else the raw weights."""
    if layout(folder) == "sharded":
        from clipkit.train.sharded import read_consolidated_model

        try:
            return read_consolidated_model(folder / SHARDS_DIR, average=ema and has_ema(folder))
        except Exception as exc:  # DCP raises several types for damaged files
            raise CheckpointError(f"unreadable checkpoint {folder / SHARDS_DIR}: {exc}") from exc
    if ema and has_ema(folder):
        try:
            return load_file(str(folder / EMA_FILE))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CheckpointError(f"unreadable checkpoint {folder / EMA_FILE}: {exc}") from exc
    try:
        return load_file(str(folder / MODEL_FILE))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"unreadable checkpoint {folder / MODEL_FILE}: {exc}") from exc


def fit_error(folder: Path, exc: BaseException) -> CheckpointError:
    first = str(exc).strip().splitlines()
    return CheckpointError(f"checkpoint {folder} does not fit the configured model: {' '.join(first[:2])[:300]}")


def first_mismatch(saved: dict[str, Sequence[int]], model: nn.Module) -> str | None:
    """The first difference between the saved weights' shapes and the model's, named: a key
    missing on either side, or a tensor of another shape."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in saved:
            return f"{key} is missing from the checkpoint"
        if tuple(saved[key]) != tuple(value.shape):
            return f"{key} has shape {tuple(saved[key])} in the checkpoint, {tuple(value.shape)} in the model"
    extra = next((key for key in saved if key not in expected), None)
    return f"{extra} is in the checkpoint but not in the model" if extra else None


def check_fits(folder: Path, saved: dict[str, Sequence[int]], model: nn.Module) -> None:
    mismatch = first_mismatch(saved, model)
    if mismatch:
        raise CheckpointError(f"checkpoint {folder} does not fit the configured model: {mismatch}")


def load_model_weights(
    model: nn.Module,
    folder: Path,
    load: Callable[[nn.Module, dict[str, torch.Tensor]], Any] | None = None,
    ema: bool = True,
) -> None:
    """The checkpoint's weights into ``model``, all keys matching; ``load`` puts a full state
    dict into the model (default: ``load_state_dict``; the trainer's also fills FSDP shards).
    ``ema``: their moving average where the checkpoint has one (what a trained model is)."""
    state = read_model_state(folder, ema)
    check_fits(folder, {key: value.shape for key, value in state.items()}, model)
    try:
        if load is None:
            model.load_state_dict(state, strict=True)
        else:
            load(model, state)
    except RuntimeError as exc:
        raise fit_error(folder, exc) from exc


def load_train_state(folder: Path) -> dict[str, Any]:
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint {folder / STATE_FILE}: {exc}") from exc
