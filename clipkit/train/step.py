"""One optimisation step's forward and backward, over one or several accumulated micro-batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from clipkit.models.multimodal import MultiModalModel, to_device_async
from clipkit.objectives.objective import Objective, TeacherOutputs

Inputs = dict[str, torch.Tensor]


def forward_backward(
    model: nn.Module,
    objective: Objective,
    inputs: list[Inputs],
    present: list[Inputs],
    autocast: Callable[[], contextlib.AbstractContextManager],
    scaler: torch.amp.GradScaler,
    teacher: TeacherOutputs | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulate into ``.grad`` the gradient of the objective on the concatenated micro-batches
    (``inputs[i]`` with its row masks ``present[i]``; ``teacher``: a distillation teacher's
    outputs for the concatenated rows).

    ``model`` is the MultiModalModel or the one wrapper (DDP) around it; the objective runs inside
    its forward. The masks may stay on the host, as the loader made them: the model then picks the
    rows to encode without reading the device, and the objective gets copies on the inputs' device.

    With several micro-batches, the negatives span all of them (feature cache): every micro-batch
    is embedded without gradient, then re-embedded one at a time with gradient while the others
    stay cached, and the full loss is back-propagated. The sum over micro-batches is exactly the
    gradient of one step on the concatenated batch. The logit scales take their gradient from the
    last pass only, and DDP or FSDP reduce the gradients of that pass only.
    """
    device = next(iter(inputs[0].values())).device
    if len(inputs) == 1:
        scored = _on(device, present[0])
        with autocast():
            losses = model(inputs[0], present[0], loss=lambda core, out: objective(core, out, scored, teacher=teacher))
        scaler.scale(losses["total"]).backward()
        return losses
    devices = _cuda_devices(inputs)
    cached, rng_states = [], []
    with torch.no_grad(), autocast():
        for x, p in zip(inputs, present):
            rng_states.append(_rng_state(devices))
            cached.append(model(x, p))
    all_present = _on(device, {m: torch.cat([p[m] for p in present]) for m in present[0]})
    last = len(inputs) - 1
    losses: dict[str, torch.Tensor] = {}
    for j, (x, p) in enumerate(zip(inputs, present)):

        def merged_loss(core: MultiModalModel, live: Inputs, j: int = j) -> dict[str, torch.Tensor]:
            merged = {m: torch.cat([live[m] if i == j else cached[i][m] for i in range(len(inputs))]) for m in live}
            return objective(core, merged, all_present, scale_grad=j == last, teacher=teacher)

        with _gradients_kept_local(model) if j < last else contextlib.nullcontext():
            # Replay the random draws of this micro-batch's cached pass (SpecAugment, dropout),
            # so the re-embedding with gradient equals the cached embedding exactly.
            with torch.random.fork_rng(devices=devices), autocast():
                _set_rng_state(rng_states[j], devices)
                losses = model(x, p, loss=merged_loss)
            scaler.scale(losses["total"]).backward()
    return losses


@contextlib.contextmanager
def _gradients_kept_local(model: nn.Module) -> Iterator[None]:
    """Backward passes inside accumulate gradients without reducing them across processes."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield


def _on(device: torch.device, masks: Inputs) -> Inputs:
    return {m: to_device_async(mask, device) for m, mask in masks.items()}


def _cuda_devices(inputs: list[Inputs]) -> list[int]:
    return sorted({t.device.index for x in inputs for t in x.values() if t.device.type == "cuda"})


def _rng_state(devices: list[int]) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: tuple, devices: list[int]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, device_state in zip(devices, cuda):
        torch.cuda.set_rng_state(device_state, device)
