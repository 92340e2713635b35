"""How the model is spread over the processes: DDP (a full copy on each, gradients averaged) or
FSDP2 (parameters, gradients and optimizer state sharded). The trainer uses DDP; FSDP is checked
against it by tests/integration/test_distributed.py and is not yet a trainer option.

Under FSDP each repeated block of every tower (open_clip's residual attention blocks, timm's
blocks or stages, the audio CNN's blocks) is its own unit, then each tower, the caption head and
the model itself: a block's full parameters exist only while it runs (forward, then backward).
The objectives' learnable scales live in the model's root unit and are used inside its forward
(see MultiModalModel.forward's ``loss``), where FSDP has gathered them.
"""
from __future__ import annotations

import re
from typing import List

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from clipkit.config.schema import FSDPConfig
from clipkit.models.multimodal import MultiModalModel

# Containers whose children are a tower's repeated blocks, by attribute name.
_BLOCK_LISTS = re.compile(r"^(resblocks|blocks|stages|layers)$")
_STAGES = re.compile(r"^layer\d+$")  # timm's ResNets: layer1..layer4


def shard_units(tower: nn.Module) -> List[nn.Module]:
    """The modules of ``tower`` that become FSDP units of their own, outermost first, none
    inside another."""
    units: List[nn.Module] = []
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
    DTensors) and returns it. Under bf16, parameters are gathered in bf16 and gradients reduced
    in fp32 (FSDP's mixed precision replaces autocast's weight casts)."""
    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    options = {"mp_policy": mixed, "reshard_after_forward": cfg.reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()}
    for tower in model.towers.values():
        for unit in shard_units(tower):
            fully_shard(unit, **options)
        fully_shard(tower, **options)
    if model.caption is not None:
        fully_shard(model.caption, **options)
    # The root stays gathered after its forward: its backward comes at once.
    fully_shard(model, **{**options, "reshard_after_forward": False})
    return model


def wrap(model: MultiModalModel, parallel: str = "ddp", fsdp: FSDPConfig = FSDPConfig(),
         precision: str = "fp32") -> nn.Module:
    """The one module the step runs: ``model`` sharded (fsdp) or replicated (ddp). The inputs are
    on the device already, so DDP gets no device_ids (it would copy every input, the row masks
    included, which the model reads on the host)."""
    if parallel == "fsdp":
        return apply_fsdp(model, fsdp, precision)
    return DistributedDataParallel(model)
