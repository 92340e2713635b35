"""The checkpoint manager: when to save, what to keep, where to resume from.

The trainer names its stateful parts once (torchtitan's pattern); a save asks each for its state
and a resume hands each its state back. There are three kinds of parts:

- the model and its optimizer: tensors, sharded under FSDP. In the ``full`` layout rank 0 writes
  them whole (``model.safetensors``, the optimizer by parameter name in ``train_state.pt``); in the
  ``sharded`` layout (FSDP runs) every process writes its shards (see :mod:`clipkit.train.sharded`);
- shared parts (progress, scheduler, grad scaler): the same in every process; rank 0's is kept;
- per-process parts (RNG, data position): one entry per process, each handed the entries of all
  the saved processes, so that it can tell a resume on another number of processes.

With ``asynchronous``, what a save writes is copied in memory first and written by a background
thread while training goes on; the next save (or the end of the run) waits for it. The folder is
published (named by ``latest``) only once every process's files are on disk.
"""

from __future__ import annotations

import copy
import errno
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from clipkit import distributed as dist_utils
from clipkit.errors import CheckpointError, ConfigError
from clipkit.train import checkpoint as ckpt
from clipkit.train.ema import WeightAverage
from clipkit.train.metrics import METRICS_FILE
from clipkit.train.mirror import CheckpointMirror
from clipkit.train.parallel import full_state, load_full_model_state, load_full_optimizer_state
from clipkit.train.sharded import read_shards, saved_model_shapes, write_shards

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PerProcessStateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_process_states(self, states: list[dict[str, Any]], rank: int, world_size: int) -> None:
        """``states``: this part's state in each process of the saved run, by rank."""


@dataclass
class CheckpointPolicy:
    every_n_steps: int
    keep_last_k: int
    resume: str | None  # auto | a checkpoint or run folder | None
    layout: str = "full"  # full | sharded
    asynchronous: bool = False
    keep_every_n_steps: int = 0  # checkpoints at multiples of it are kept beyond the last k (0: none)


@dataclass(eq=False, repr=False)
class CheckpointManager:
    root: Path
    policy: CheckpointPolicy
    model: nn.Module
    optimizer: torch.optim.Optimizer
    shared: dict[str, Stateful]
    per_process: dict[str, PerProcessStateful]
    config_yaml: str
    env: dist_utils.DistEnv
    ema: WeightAverage | None = None
    mirror: CheckpointMirror | None = None  # on the main process only

    def __post_init__(self) -> None:
        root, policy, env = self.root, self.policy, self.env
        self.last_saved: int | None = None
        if env.is_main and root.is_dir():
            ckpt.clear_staging(root)  # what a run killed inside a save left
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="clipkit-ckpt") if policy.asynchronous else None
        self._pending: Future | None = None
        # A background save's collectives need a group of their own: the training's run meanwhile.
        self._group = (
            dist.new_group(backend="gloo")
            if policy.asynchronous and policy.layout == "sharded" and env.joined
            else None
        )

    # ------------------------------------------------------------------------------ saving
    def maybe_save(self, step: int, final: bool = False) -> None:
        """Saves at every ``every_n_steps``-th step and at the ``final`` one, each once."""
        if (step % self.policy.every_n_steps == 0 or final) and self.last_saved != step:
            self.save(step)

    def save(self, step: int) -> None:
        """Collective."""
        self.wait()
        processes = dist_utils.gather_objects({name: part.state_dict() for name, part in self.per_process.items()})
        state: dict[str, Any] = {
            "format": 2,
            **{name: part.state_dict() for name, part in self.shared.items()},
            "processes": processes,
        }
        if self._writer is not None:  # a state dict may share objects that training goes on changing
            state = copy.deepcopy(state)
        if self.policy.layout == "sharded":
            work = self._save_sharded(step, state)
        else:
            work = self._save_full(step, state)
        work = self._cleaned_up_on_failure(work, step)
        if self._writer is not None:
            self._pending = self._writer.submit(work)
        else:
            work()
            dist_utils.barrier()
        self.last_saved = step

    def _save_full(self, step: int, state: dict[str, Any]) -> Callable[[], None]:
        weights, optimizer_state = full_state(self.model, self.optimizer)  # collective; whole on rank 0
        if not self.env.is_main:
            return lambda: None
        if self._writer is not None and weights and next(iter(weights.values())).device.type == "cpu":
            # On CPU these share memory with the live weights, which training goes on changing.
            weights, optimizer_state = copy.deepcopy((weights, optimizer_state))
        state["optimizer"] = optimizer_state
        # A host copy taken now: training goes on updating the average.
        average = {k: v.detach().to("cpu", copy=True) for k, v in self.ema.state_dict().items()} if self.ema else None
        staging = self._staging(step)

        def work() -> None:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(staging / ckpt.MODEL_FILE))
            if average is not None:
                save_file({k: v.contiguous() for k, v in average.items()}, str(staging / ckpt.EMA_FILE))
            self._write_host_files(staging, state)
            self._publish(staging, step, "full")

        return work

    def _save_sharded(self, step: int, state: dict[str, Any]) -> Callable[[], None]:
        staging = self._staging(step) if self.env.is_main else ckpt.staging_dir(self.root, step)
        dist_utils.barrier()  # the staging folder exists (and no stale one) before anyone writes
        written = write_shards(
            self.model,
            self.optimizer,
            staging / ckpt.SHARDS_DIR,
            self._group,
            asynchronous=self._writer is not None,
            average=self.ema.module if self.ema is not None else None,
        )

        def work() -> None:
            if written is not None:
                written.result()  # on rank 0: every process's shards and the metadata are on disk
            if self.env.is_main:
                self._write_host_files(staging, state)
                self._publish(staging, step, "sharded")

        return work

    def _cleaned_up_on_failure(self, work: Callable[[], None], step: int) -> Callable[[], None]:
        """``work``, which on failure removes its half-written folder (freeing the space a full disk
        needs) and says in one line when the disk is full: torch.save reports that as an opaque
        RuntimeError."""

        def guarded() -> None:
            try:
                work()
            except Exception as exc:
                full = _disk_full(exc, self.root)
                shutil.rmtree(ckpt.staging_dir(self.root, step), ignore_errors=True)
                if not full:
                    raise
                last = ckpt.find_latest(self.root)
                raise CheckpointError(
                    f"no space left on the file system of {self.root} while saving step {step}; the last "
                    f"complete checkpoint is {last.name if last else 'none'}"
                ) from exc

        return guarded

    def _staging(self, step: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        ckpt.clear_staging(self.root)
        staging = ckpt.staging_dir(self.root, step)
        staging.mkdir()
        return staging

    def _write_host_files(self, staging: Path, state: dict[str, Any]) -> None:
        torch.save(state, staging / ckpt.STATE_FILE)
        (staging / ckpt.CONFIG_FILE).write_text(self.config_yaml)

    def _publish(self, staging: Path, step: int, layout: str) -> None:
        folder = ckpt.publish(
            staging, step, layout, self.env.world_size, self.policy.keep_last_k, self.policy.keep_every_n_steps
        )
        log.info("saved checkpoint %s", folder)
        if self.mirror is not None:
            kept = [p.name for p in ckpt.complete_checkpoints(self.root)]
            self.mirror.upload(folder, kept, self.root.parent / METRICS_FILE)

    def wait(self) -> None:
        """Until the save in flight (if any) is published; raises what it raised."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        if self.mirror is not None:
            self.mirror.wait()

    def close(self) -> None:
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()
        if self.mirror is not None:
            self.mirror.close()

    # ------------------------------------------------------------------------------ resuming
    def resume(self) -> Path | None:
        """Restores every part from the checkpoint ``policy.resume`` names (``auto``: the newest
        intact one of this run, if any) and returns its folder. Collective."""
        folder = self._resume_folder()
        if folder is None:
            return None
        _check_same_optimizer(folder, self.config_yaml)
        state = _upgrade(ckpt.load_train_state(folder))
        try:
            average = None  # the moving average, when it comes with the shards
            if ckpt.layout(folder) == "sharded":
                ckpt.check_fits(folder, saved_model_shapes(folder / ckpt.SHARDS_DIR), self.model)
                average = self.ema.module if self.ema is not None and ckpt.has_ema(folder) else None
                read_shards(self.model, self.optimizer, folder / ckpt.SHARDS_DIR, average)
            else:
                ckpt.load_model_weights(self.model, folder, load_full_model_state, ema=False)
                load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
            if self.ema is not None and average is None:
                self._resume_average(folder)
        except (RuntimeError, KeyError, ValueError, CheckpointException) as exc:
            raise ckpt.fit_error(folder, exc) from exc
        for name, part in self.shared.items():
            part.load_state_dict(state[name])
        for name, part in self.per_process.items():
            part.load_process_states([p[name] for p in state["processes"]], self.env.rank, self.env.world_size)
        self.last_saved = ckpt.checkpoint_step(folder)
        return folder

    def _resume_average(self, folder: Path) -> None:
        if ckpt.has_ema(folder):
            self.ema.load_state_dict(ckpt.read_model_state(folder, ema=True))
        else:  # trainer.ema switched on for a run that had none: the average starts here
            log.info("%s has no moving average of the weights; it starts from this checkpoint's", folder)
            self.ema.load_state_dict(ckpt.read_model_state(folder, ema=False))

    def _resume_folder(self) -> Path | None:
        """Chosen and checked on rank 0 (reading every file for its checksum), shared with all."""
        choice = self.policy.resume
        if choice is None:
            return None
        found: str | None = None
        error: str | None = None
        if self.env.is_main:
            try:
                folder = (
                    ckpt.find_latest(self.root, checksums=True) if choice == "auto" else ckpt.resolve_checkpoint(choice)
                )
                if folder is None and choice == "auto" and self.mirror is not None:
                    folder = self.mirror.fetch_latest(self.root) and ckpt.find_latest(self.root, checksums=True)
                if folder is not None and choice != "auto":
                    error = ckpt.problem(folder, checksums=True)
                found = str(folder) if folder is not None else None
            except CheckpointError as exc:
                error = str(exc)
        found, error = dist_utils.broadcast_object((found, error))
        if error is not None:
            raise CheckpointError(error)
        return Path(found) if found is not None else None


def _check_same_optimizer(folder: Path, config_yaml: str) -> None:
    """An optimizer's state fits its own kind only (loaded into another, the load fails on keys
    it does not know, reported as a checkpoint that does not fit the model): a resume under
    another ``optim.name`` is one line, before anything is read."""

    def name(text: str) -> str:
        return str(OmegaConf.select(OmegaConf.create(text), "optim.name", default="adamw"))

    saved_config = folder / ckpt.CONFIG_FILE
    saved, current = name(saved_config.read_text()) if saved_config.is_file() else None, name(config_yaml)
    if saved is not None and saved != current:
        raise ConfigError(
            "optim.name",
            f"{folder} holds the state of optim.name={saved}, not of {current}: resume with optim.name={saved}, or "
            f"start a new run from its weights with model.init.clipkit={folder}",
        )


def _disk_full(exc: BaseException, folder: Path) -> bool:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain):
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


_NEARLY_FULL = 16 << 20  # bytes free after a failed write that mean the disk filled up


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A ``train_state.pt`` written before the checkpoint manager, in today's form."""
    if state.get("format", 1) >= 2:
        return state
    data = state["data"]
    processes = [
        {
            "rng": saved["rng"],
            "data": {
                "epoch": data["epoch"],
                "taken": saved["taken"],
                "workers": data["workers"],
                "skipped": data["skipped"] if rank == 0 else 0,
            },
        }
        for rank, saved in enumerate(data["ranks"])
    ]
    return {
        "format": 2,
        "progress": {"step": state["step"], "samples_seen": state["samples_seen"]},
        "scheduler": state["scheduler"],
        "scaler": state["scaler"],
        "optimizer": state["optimizer"],
        "processes": processes,
    }
