"""An eval task: what its sets hold beyond the shards, what each sample's target is, and how its
metrics are computed. A task is one module in this package, registered under the name that
``eval.datasets.<set>.task`` selects; nothing else names it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipkit.config.checks import RunFacts
from clipkit.eval.eval_set import EvalSet, member_lines
from clipkit.modalities.base import Loader
from clipkit.registry import Registry

if TYPE_CHECKING:
    from clipkit.eval.runner import Evaluator
    from clipkit.models.multimodal import MultiModalModel

Metrics = dict[str, float]


@dataclass
class TaskResult:
    metrics: Metrics
    examples: list[dict]  # kept in eval/<set>.json beside the metrics (e.g. generated captions)


class EvalTask:
    # What the items may be matched with: ("text",) or, with None, also another modality the
    # samples carry (image <-> audio retrieval).
    partners: tuple[str, ...] | None = ("text",)

    def check(self, key: str, run: RunFacts, modality: str) -> None:
        """What this task needs of the model, before anything is read."""

    def open(self, eval_set: EvalSet, root: Path, key: str) -> None:
        """Reads the set's files beyond its shards (e.g. class names) into ``eval_set``."""

    def target(self, sample: dict, eval_set: EvalSet, loaders: dict[str, Loader]) -> Any:
        """What a sample's item is scored against: by default its captions (``txt``)."""
        captions = member_lines(sample, "txt")
        if not captions:
            raise ValueError("no captions")
        return captions

    def run(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        raise NotImplementedError


EVAL_TASKS: Registry[EvalTask] = Registry("eval task")


def stack_targets(targets: list[Any]) -> list[Any] | torch.Tensor:
    """A batch's targets: tensors (a partner modality's inputs) stacked, anything else listed."""
    if targets and isinstance(targets[0], torch.Tensor):
        return torch.stack(targets)
    return targets
