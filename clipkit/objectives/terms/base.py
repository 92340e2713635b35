"""A loss term over the model's modality pairs: its config (with its own checks), the batch it is
computed on, and the registry it joins.

A term is one module in this package: a config dataclass derived from :class:`PairTermConfig`
and a :class:`PairTerm` registered under the name that becomes its ``loss.<name>`` config group
and its ``<name>/<pair>`` metric. Nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from clipkit.config.checks import RunFacts, named_weights, positive
from clipkit.objectives.collectives import Collectives
from clipkit.pairs import split_pair
from clipkit.registry import Registry

if TYPE_CHECKING:
    from clipkit.models.multimodal import MultiModalModel

Tensors = dict[str, torch.Tensor]


@dataclass
class PairTermConfig:
    """Every term has a weight; 0 switches it off entirely (not computed, no parameters, not logged)."""

    POSITIVE: ClassVar[tuple[str, ...]] = ()  # the term's own settings that must be > 0

    weight: float = 0.0
    # Relative weight per pair of model.pairs (e.g. {audio_text: 0.5}); pairs not listed weigh 1.
    pair_weights: dict[str, float] = field(default_factory=dict)

    def check(self, key: str, run: RunFacts) -> None:
        positive(f"{key}.weight", self.weight, allow_zero=True)
        named_weights(f"{key}.pair_weights", self.pair_weights, list(run.pairs), "pair", "model.pairs")
        for name in self.POSITIVE:
            positive(f"{key}.{name}", getattr(self, name))

    def pair_parameters(self, init_logit_scale: float) -> dict[str, Any]:
        """The learnable per-pair parameters this term needs while on, as fields of
        :class:`clipkit.models.multimodal.PairParameters`."""
        return {}


@dataclass
class TeacherOutputs:
    """What the distillation teacher gives for a batch: embeddings per modality, scale per pair."""

    embeddings: Tensors
    scales: Tensors


@dataclass
class PairBatch:
    """One pair of one batch, as a term sees it."""

    model: MultiModalModel
    pair: str
    first: str
    second: str
    a: torch.Tensor  # the first modality's embeddings (detached where the pair anchors it)
    b: torch.Tensor
    valid: torch.Tensor  # the rows that carry both modalities
    anchored: str | None  # loss.anchors' modality of this pair, if any
    outputs: Tensors  # the model's whole forward
    present: Tensors
    scale_grad: bool  # False: the learnable scales and biases stay out of this gradient
    teacher: TeacherOutputs | None

    @classmethod
    def of(
        cls,
        model: MultiModalModel,
        pair: str,
        outputs: Tensors,
        present: Tensors,
        anchored: str | None,
        scale_grad: bool,
        teacher: TeacherOutputs | None,
    ) -> PairBatch:
        """The pair's side of the model's forward: its two embeddings (the anchored one detached)
        and the rows that carry both."""
        first, second = split_pair(pair)
        a, b = (outputs[m].detach() if anchored == m else outputs[m] for m in (first, second))
        valid = present[first] & present[second]
        return cls(model, pair, first, second, a, b, valid, anchored, outputs, present, scale_grad, teacher)

    def learnable(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.scale_grad else value.detach()


class PairTerm:
    """Computes one term for one pair; built once per run."""

    def __init__(self, cfg: PairTermConfig, comm: Collectives) -> None:
        self.cfg = cfg
        self.comm = comm

    def at_step(self, step: int) -> None:
        """Called before each optimizer step's batches (schedules inside a term)."""

    def applies(self, batch: PairBatch) -> bool:
        return True

    def __call__(self, batch: PairBatch) -> torch.Tensor:
        raise NotImplementedError


PAIR_TERMS: Registry[PairTerm] = Registry("loss term")
