"""How the model is spread over the processes: ``trainer.parallel=ddp`` (a full copy on each,
gradients averaged) or ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded), and
how its state is taken whole for a checkpoint and put back.

Under FSDP each repeated block of every tower (open_clip's residual attention blocks, timm's
blocks or stages, the audio CNN's blocks) is its own unit, then each tower, the caption head and
the model itself: a block's full parameters exist only while it runs (forward, then backward).
The objectives' learnable scales live in the model's root unit and are used inside its forward
(see MultiModalModel.forward's ``loss``), where FSDP has gathered them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.nn.parallel import DistributedDataParallel

from clipkit.models.multimodal import MultiModalModel


@dataclass
class FSDPConfig:
    """trainer.parallel=fsdp: FSDP2 (clipkit.train.parallel)."""

    reshard_after_forward: bool = True  # free each unit's gathered parameters after its forward
    cpu_offload: bool = False  # parameters, gradients and optimizer state kept on the host
    # With trainer.precision=bf16: false runs the training step without autocast, every tower op in
    # the gathered weights' bf16 (layer norms and residual stream too, as torchtitan trains), which
    # saves autocast's activation-sized casts; the towers still hand fp32 embeddings to the
    # objectives, and evaluation keeps autocast.
    autocast: bool = True


# Containers whose children are a tower's repeated blocks, by attribute name.
_BLOCK_LISTS = re.compile(r"^(resblocks|blocks|stages|layers)$")
_STAGES = re.compile(r"^layer\d+$")  # timm's ResNets: layer1..layer4
_FULL_ON_HOST = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_units(tower: nn.Module) -> list[nn.Module]:
    """The modules of ``tower`` that become FSDP units of their own, outermost first, none
    inside another."""
    units: list[nn.Module] = []
    for name, module in tower.named_children():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and _BLOCK_LISTS.match(name):
            units.extend(module)
        elif _STAGES.match(name):
            units.append(module)
        else:
            units.extend(shard_units(module))
    return units


def apply_fsdp(model: MultiModalModel, cfg: FSDPConfig, precision: str) -> MultiModalModel:
    """Shards ``model`` in place (its class and parameter names stay; its parameters become
    DTensors) and returns it. Under bf16 the towers' and caption head's parameters are gathered in
    bf16 (FSDP's mixed precision replaces autocast's weight casts), each unit casts its float
    inputs to bf16, and gradients are reduced in fp32. The towers return fp32, so the objectives
    score in fp32; the root's learnable scales stay fp32 (bf16 would move the logit scale in
    steps of 1.6 %). An encoder that computes on its float input in fp32 first (the audio front
    end's STFT) takes it uncast and casts what it hands on itself."""
    mixed = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    to_fp32 = replace(mixed, output_dtype=torch.float32) if precision == "bf16" else mixed
    placement = {
        "reshard_after_forward": cfg.reshard_after_forward,
        "offload_policy": CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy(),
    }
    for tower in model.towers.values():
        for unit in shard_units(tower):
            fully_shard(unit, mp_policy=mixed, **placement)
        own_cast = getattr(tower.encoder, "casts_own_input", False)
        fully_shard(tower, mp_policy=replace(to_fp32, cast_forward_inputs=not own_cast), **placement)
        # FSDP gathers a unit's parameters around its forward only; the caption loss calls these.
        register_fsdp_forward_method(tower, "forward_with_tokens")
    if model.caption is not None:
        fully_shard(model.caption, mp_policy=to_fp32, **placement)
        register_fsdp_forward_method(model.caption, "token_nll")
    # The root stays gathered after its forward: its backward comes at once.
    fully_shard(model, mp_policy=MixedPrecisionPolicy(), **{**placement, "reshard_after_forward": False})
    return model


def wrap(model: MultiModalModel, parallel: str, fsdp: FSDPConfig, precision: str) -> nn.Module:
    """The one module the step runs: ``model`` sharded (fsdp) or replicated (ddp). The inputs are
    on the device already, so DDP gets no device_ids (it would copy every input, the row masks
    included, which the model reads on the host)."""
    if parallel == "fsdp":
        return apply_fsdp(model, fsdp, precision)
    return DistributedDataParallel(model)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The whole weights and optimizer state, on the host of rank 0 (empty elsewhere under FSDP),
    the optimizer's keyed by parameter name: the same layout whatever the mode and the number of
    processes, so that a DDP checkpoint resumes under FSDP, and 2 processes as 1. Collective."""
    return (
        get_model_state_dict(model, options=_FULL_ON_HOST),
        get_optimizer_state_dict(model, optimizer, options=_FULL_ON_HOST),
    )


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every process passes the whole weights; under FSDP each keeps its shards."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The optimizer state of :func:`full_state` (by parameter name); a state keyed by position,
    as clipkit wrote before it had FSDP, loads as it was saved."""
    if all(isinstance(key, int) for group in state["param_groups"] for key in group["params"]):
        optimizer.load_state_dict(state)
    else:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def gathered(model: nn.Module, cfg: FSDPConfig) -> Iterator[None]:
    """Inside, every FSDP unit of ``model`` holds its full weights and keeps them after a forward:
    no collective per forward, so the processes may run different numbers of forwards, as
    evaluation does over its shares of an eval set. Without FSDP, nothing changes."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(cfg.reshard_after_forward and unit is not model, recurse=False)
