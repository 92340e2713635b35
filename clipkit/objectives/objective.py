"""The training objective: the weighted sum of the configured loss terms over the model's pairs.

Terms, each logged under its name: ``contrastive/<pair>`` (InfoNCE), ``sigmoid/<pair>`` (SigLIP),
``uniformity/<pair>`` (mean of the pair's two modalities), ``alignment/<pair>``,
``cross_uniformity/<pair>``, ``distill/<pair>`` (for the pairs the teacher has) and
``caption/<source>``. A term of weight 0 is not computed. A pair with an anchor (``loss.anchors``)
sends no gradient into the anchored side. Hard-negative captions (``outputs["text_negatives"]``)
join the contrastive terms of the pairs with text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipkit.config.schema import PAIR_TERMS, LossConfig, PairTermConfig
from clipkit.models.multimodal import MultiModalModel, split_pair
from clipkit.objectives.collectives import LOCAL, Collectives
from clipkit.objectives.contrastive import HardNegatives, NegativeRule, clip_loss
from clipkit.objectives.distill import distill_loss
from clipkit.objectives.geometry import alignment, cross_uniformity, uniformity
from clipkit.objectives.sigmoid import sigmoid_loss

Tensors = dict[str, torch.Tensor]


@dataclass
class TeacherOutputs:
    """What the distillation teacher gives for a batch: embeddings per modality, scale per pair."""

    embeddings: Tensors
    scales: Tensors


class Objective:
    def __init__(self, cfg: LossConfig, comm: Collectives = LOCAL) -> None:
        self.cfg = cfg
        self.comm = comm
        self.scale_factor = 1.0  # of the contrastive logit scales: see at_step
        self.negative_rule = NegativeRule(cfg.contrastive.hardness, cfg.contrastive.debias, cfg.contrastive.decoupled)

    def at_step(self, step: int) -> None:
        """Temperature warm-up (loss.contrastive.scale_warmup_steps): the contrastive terms use
        the learned logit scale times a factor rising linearly to 1. The learned scale barely moves
        in a short run (Adam moves its log by at most the learning rate per step), so its initial
        value sets the temperature of the whole run. On the parity digits set, CLIP's 1/0.07
        from the first step left 4 of 10 seeds on the initial plateau (loss ln N) at step 100;
        half of it rising to all of it over 150 steps left none (benchmarks/plateau_screen.py)."""
        steps, start = self.cfg.contrastive.scale_warmup_steps, self.cfg.contrastive.scale_warmup_start
        self.scale_factor = min(1.0, start + (1.0 - start) * step / steps) if steps else 1.0

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
        for name in PAIR_TERMS:
            term_cfg: PairTermConfig = getattr(cfg, name)
            if term_cfg.weight <= 0:
                continue
            for pair in model.pairs:
                if name == "distill" and (teacher is None or pair not in teacher.scales):
                    continue  # a pair the teacher does not have
                first, second = split_pair(pair)
                valid = present[first] & present[second]
                a, b = (outputs[m].detach() if cfg.anchors.get(pair) == m else outputs[m] for m in (first, second))
                hard = None
                if name == "contrastive" and "text_negatives" in outputs and "text" in (first, second):
                    negatives = outputs["text_negatives"]
                    hard = HardNegatives(
                        negatives.detach() if cfg.anchors.get(pair) == "text" else negatives,
                        present["text_negatives"],
                        cfg.contrastive.hard_negatives.weight,
                    )
                    if first == "text":  # the negatives are columns of the other side's rows
                        a, b = b, a
                term = self._pair_term(name, model, pair, a, b, valid, scale_grad, teacher, hard)
                terms[f"{name}/{pair}"] = term
                total = total + term_cfg.weight * term_cfg.pair_weights.get(pair, 1.0) * term
        if cfg.caption.weight > 0 and model.caption is not None:
            for source in model.caption.sources:
                term = self._caption(outputs[f"caption_nll/{source}"], outputs[f"caption_tokens/{source}"])
                terms[f"caption/{source}"] = term
                total = total + cfg.caption.weight * cfg.caption.source_weights.get(source, 1.0) * term
        terms["total"] = total
        return terms

    def _pair_term(
        self,
        name: str,
        model: MultiModalModel,
        pair: str,
        a: torch.Tensor,
        b: torch.Tensor,
        valid: torch.Tensor,
        scale_grad: bool,
        teacher: TeacherOutputs | None,
        hard: HardNegatives | None = None,
    ) -> torch.Tensor:
        cfg, comm = self.cfg, self.comm

        def learnable(value: torch.Tensor) -> torch.Tensor:
            return value if scale_grad else value.detach()

        if name == "contrastive":
            scale = learnable(model.logit_scale(pair))
            if self.scale_factor != 1.0:
                scale = scale * self.scale_factor
            return clip_loss(a, b, scale, comm.gather, cfg.contrastive.local_loss, valid, self.negative_rule, hard)
        if name == "distill":
            first, second = split_pair(pair)
            return distill_loss(
                a,
                b,
                teacher.embeddings[first],
                teacher.embeddings[second],
                learnable(model.logit_scale(pair)),
                teacher.scales[pair],
                comm.gather,
                valid,
            )
        if name == "sigmoid":
            return sigmoid_loss(
                a, b, learnable(model.sigmoid_scale(pair)), learnable(model.sigmoid_bias(pair)), comm, valid
            )
        if name == "uniformity":
            t = cfg.uniformity.t
            return (uniformity(a, t, comm, valid) + uniformity(b, t, comm, valid)) / 2
        if name == "alignment":
            return alignment(a, b, cfg.alignment.alpha, comm, valid)
        return cross_uniformity(a, b, cfg.cross_uniformity.t, comm, valid)

    def _caption(self, nll: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over the global batch's scored tokens; averaged over processes
        (as DDP averages gradients) it is the global mean."""
        count = self.comm.sum(tokens.sum().float()).detach()
        return nll.sum() * self.comm.world_size / count.clamp(min=1)  # no token: an exact zero
