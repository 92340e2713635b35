"""Process groups from the launcher's environment, and the collectives training needs.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. ``srun`` without torchrun
sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the rendezvous address then comes from
MASTER_ADDR / MASTER_PORT if set, else from the node that launched the step and a port derived
from the job id. A launched process joins a process group even when it is the only one (a
1-GPU torchrun run then trains under DDP on NCCL exactly as a larger one does); a process started
by neither runs alone, with no process group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from clipkit.errors import ConfigError

log = logging.getLogger("clipkit")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    joined: bool = False  # in a process group (started by torchrun or srun), one process included

    @property
    def distributed(self) -> bool:
        """More than one process: data, negatives and evaluation are shared out."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launcher_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun or SLURM, or None when started alone."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        env.setdefault("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def launched() -> bool:
    """Started by torchrun or srun: the process will join a process group."""
    return _launcher_env() is not None


def launched_rank() -> int:
    """This process's rank as the launcher gives it (0 without one), known before any process group exists."""
    launched = _launcher_env()
    return launched[0] if launched else 0


def launched_world_size() -> int:
    """Processes the launcher started (1 without one), known before any process group exists."""
    launched = _launcher_env()
    return launched[1] if launched else 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` takes the local rank's GPU when there is one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", "cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def init_distributed(device_name: str, backend: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Join the process group the launcher describes (once), and pick this process's device."""
    launched = _launcher_env()
    if launched is None:
        return DistEnv(device=pick_device(device_name))
    rank, world_size, local_rank = launched
    device = pick_device(device_name, local_rank)
    if not dist.is_initialized():
        if backend == "auto":
            # With GPUs, host tensors (the flags that keep the ranks in step) go through gloo: a
            # collective of host values then never waits for the device's queue of work.
            backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
        log.info(
            "process group: rank %d of %d (local %d), backend %s, device %s",
            rank,
            world_size,
            local_rank,
            backend,
            device,
        )
    return DistEnv(rank, world_size, local_rank, device, joined=True)


def shutdown(env: DistEnv) -> None:
    if env.joined and dist.is_initialized():
        dist.destroy_process_group()


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows concatenated in rank order, differentiable (the backward sums each
    rank's gradient into the rows it contributed), and the offset of this rank's rows.
    Assumes the same number of rows on every rank."""
    if not _initialised():
        return x, 0
    return torch.cat(dist_fn.all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, differentiable: the backward sums every rank's gradient."""
    return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM) if _initialised() else x


class _RingPass(torch.autograd.Function):
    """Send to the next rank, receive from the previous one; the gradient goes the other way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _exchange(x.contiguous(), step=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _exchange(grad.contiguous(), step=-1)


def _exchange(x: torch.Tensor, step: int) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, (rank + step) % world), dist.P2POp(dist.irecv, received, (rank - step) % world)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def ring_pass_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The previous rank's ``x`` (same shape on every rank), differentiable; alone: ``x``."""
    return _RingPass.apply(x) if _initialised() else x


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if _initialised():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return all_reduce_sum(value) / world


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (e.g. "I still have a batch"). Agreed on host
    tensors: reading a device one would wait for the device."""
    if not _initialised():
        return flag
    value = torch.tensor([1 if flag else 0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_ranks_max(value: int) -> int:
    """The largest of the ranks' integers, on every rank (host tensors, as above)."""
    if not _initialised():
        return value
    box = torch.tensor(
        [value], dtype=torch.int64, device=torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
    )
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def gather_rows(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate every rank's rows (counts may differ), on every rank; no gradient."""
    if not _initialised():
        return x
    count = torch.tensor([x.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x.to(device)
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)]).to(x.device)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable object, in rank order, on every rank."""
    if not _initialised():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's object, on every rank."""
    if not _initialised():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _initialised():
        dist.barrier()
