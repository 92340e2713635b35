"""The training objective: the weighted sum of the configured loss terms over the model's pairs.

Each pair term (``clipkit.objectives.terms``) is logged as ``<name>/<pair>``: ``contrastive``
(InfoNCE), ``sigmoid`` (SigLIP), ``uniformity`` (mean of the pair's two modalities),
``alignment``, ``cross_uniformity``, ``distill`` (for the pairs the teacher has); the caption term
as ``caption/<source>``. A term of weight 0 is not computed. A pair with an anchor
(``loss.anchors``) sends no gradient into the anchored side. Hard-negative captions
(``outputs["text_negatives"]``) join the contrastive terms of the pairs with text.
"""

from __future__ import annotations

import torch

from clipkit.models.multimodal import MultiModalModel
from clipkit.objectives.caption_loss import caption_loss
from clipkit.objectives.collectives import LOCAL, Collectives
from clipkit.objectives.loss_config import LossConfig
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, TeacherOutputs, Tensors

__all__ = ["Objective", "TeacherOutputs"]


class Objective:
    def __init__(self, cfg: LossConfig, comm: Collectives = LOCAL) -> None:
        self.cfg = cfg
        self.comm = comm
        self.terms: dict[str, PairTerm] = {
            name: PAIR_TERMS.get(name).build(term_cfg, comm)
            for name, term_cfg in cfg.pair_terms().items()
            if term_cfg.weight > 0
        }

    def at_step(self, step: int) -> None:
        """Before the batches of optimizer step ``step``: each term's own schedule (e.g. the
        contrastive temperature warm-up)."""
        for term in self.terms.values():
            term.at_step(step)

    def __call__(
        self,
        model: MultiModalModel,
        outputs: Tensors,
        present: Tensors,
        scale_grad: bool = True,
        teacher: TeacherOutputs | None = None,
    ) -> Tensors:
        """Loss terms by name and their weighted ``total``.

        ``outputs`` is the model's forward; ``present[m]`` marks the rows that carry modality m;
        a pair is scored on the rows that carry both. ``scale_grad=False`` keeps the learnable
        scales and biases out of this call's gradient. ``teacher``: the distillation teacher's
        embeddings of the same rows and its logit scale per pair (loss.distill).
        """
        cfg = self.cfg
        terms: Tensors = {}
        total = next(iter(outputs.values())).new_zeros((), dtype=torch.float32)
        batches = {
            pair: PairBatch.of(model, pair, outputs, present, cfg.anchors.get(pair), scale_grad, teacher)
            for pair in model.pairs
        }
        for name, term in self.terms.items():
            for pair, batch in batches.items():
                if not term.applies(batch):
                    continue
                value = term(batch)
                terms[f"{name}/{pair}"] = value
                total = total + term.cfg.weight * term.cfg.pair_weights.get(pair, 1.0) * value
        if cfg.caption.weight > 0 and model.caption is not None:
            for source in model.caption.sources:
                value = caption_loss(outputs[f"caption_nll/{source}"], outputs[f"caption_tokens/{source}"], self.comm)
                terms[f"caption/{source}"] = value
                total = total + cfg.caption.weight * cfg.caption.source_weights.get(source, 1.0) * value
        terms["total"] = total
        return terms
