"""A modality as one registered spec: what carries it in a sample, and what turns those bytes into
the inputs of its tower. The data pipeline, the model builder, the eval sets, the exporters and the
distillation teacher ask the spec; a new modality (video frames, depth) is a spec and a tower."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from clipkit.registry import Registry

if TYPE_CHECKING:
    from clipkit.config.schema import DataConfig
    from clipkit.models.towers.base import TowerConfig

Loader = Callable[[bytes], Any]  # a sample member's bytes -> one row of model input


@dataclass(frozen=True)
class ModalityFeed:
    """One modality's inputs, for its configured tower."""

    input_shape: tuple[int, ...]  # one sample's
    dtype: torch.dtype
    train_loader: Loader | None  # None: decoded elsewhere (captions are tokenised per batch)
    eval_loader: Loader | None
    # training rows as the data workers ship them -> the tower's inputs on the training device,
    # clearing in the host mask (has_<modality>) the rows it cannot decode and saying how many
    on_device: Callable[[object, torch.Tensor], tuple[torch.Tensor, int]] | None = None
    preprocessing: str = ""  # how a user of an export prepares an input (the ONNX manifest says it)

    def empty(self, rows: int) -> torch.Tensor:
        """Zeros standing in for the modality in a batch none of whose rows carries it."""
        return torch.zeros((rows, *self.input_shape), dtype=self.dtype)


class ModalitySpec:
    # The member extensions that carry the modality in an eval set's samples; training shards name
    # theirs in data.keys.<modality>.
    eval_members: ClassVar[tuple[str, ...]] = ()

    def feed(self, tower: TowerConfig, data: DataConfig, device: torch.device) -> ModalityFeed:
        raise NotImplementedError

    def signature(self, tower: TowerConfig, data: DataConfig) -> tuple:
        """What a tower of this modality takes, compared between a distillation teacher and its
        student: the two must read the same inputs."""
        raise NotImplementedError


MODALITIES: Registry[ModalitySpec] = Registry("modality")


@functools.cache
def eval_members() -> dict[str, tuple[str, ...]]:
    """Per modality an eval set's samples can carry as their items, its member extensions. Read
    once (per eval sample it is asked): every spec registers when this package is imported."""
    return {name: entry.build.eval_members for name, entry in MODALITIES.items() if entry.build.eval_members}
