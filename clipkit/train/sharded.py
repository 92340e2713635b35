"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): every process writes the
shards of the weights and optimizer state it holds, and reads back whatever shards its own
layout needs, so a run resumes on another number of processes, and under DDP as under FSDP.

The state is ``{"model": ..., "optimizer": ...}`` as ``get_state_dict`` gives it: the model's
weights and the optimizer's state both keyed by parameter name (DTensors under FSDP, whole
tensors otherwise), and with ``trainer.ema`` the weights' moving average as ``"ema"``, keyed as
the model's.
"""

from __future__ import annotations

import warnings
from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

_MODEL = "model."
_AVERAGE = "ema."


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, average: nn.Module | None) -> dict:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if average is not None:
        state["ema"] = get_model_state_dict(average)
    return state


def write_shards(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    folder: Path,
    process_group: dist.ProcessGroup | None = None,
    asynchronous: bool = False,
    average: nn.Module | None = None,
) -> Future | None:
    """Collective: every process writes its shards into ``folder`` (and those of ``average``, the
    weights' moving average). ``asynchronous``: the state is copied to host memory now and written
    by a background thread; the returned future is done when every process's files and the
    metadata are on disk (``process_group`` must then be a group of its own, on gloo, as the
    training's collectives run meanwhile)."""
    state = _state(model, optimizer, average)
    if asynchronous:
        return dcp.async_save(state, checkpoint_id=str(folder), process_group=process_group)
    dcp.save(state, checkpoint_id=str(folder), process_group=process_group)
    return None


def read_shards(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, average: nn.Module | None = None
) -> None:
    """Collective: each process loads the parts of the saved state that its shards cover (with
    ``average``, the saved moving average too: the checkpoint must have one)."""
    state = _state(model, optimizer, average)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if average is not None:
        set_model_state_dict(average, state["ema"])


def _entries(reader: dcp.FileSystemReader, prefix: str) -> dict[str, TensorStorageMetadata]:
    """The saved weights' (or their average's) metadata (whole shape, dtype) by their key in the
    checkpoint."""
    return {
        key: meta
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }


def saved_model_shapes(folder: Path) -> dict[str, torch.Size]:
    """Each saved weight's whole shape, by name, from the metadata alone."""
    return {key[len(_MODEL) :]: meta.size for key, meta in _entries(dcp.FileSystemReader(str(folder)), _MODEL).items()}


def has_saved_average(folder: Path) -> bool:
    """Whether the shards hold the weights' moving average (from the metadata alone)."""
    return bool(_entries(dcp.FileSystemReader(str(folder)), _AVERAGE))


def read_consolidated_model(folder: Path, average: bool = False) -> dict[str, torch.Tensor]:
    """The whole weights (``average``: their saved moving average), on the CPU of this one process,
    from the shards of any number: what evaluation, export and ``clipkit.load`` read. Needs no
    process group."""
    prefix = _AVERAGE if average else _MODEL
    reader = dcp.FileSystemReader(str(folder))
    state = {key: torch.empty(meta.size, dtype=meta.properties.dtype) for key, meta in _entries(reader, prefix).items()}
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {key[len(prefix) :]: value for key, value in state.items()}
