"""The training objective: the weighted sum of the configured loss terms over the model's pairs.

Terms, each logged under its name: ``contrastive/<pair>`` (InfoNCE), ``sigmoid/<pair>`` (SigLIP),
``uniformity/<pair>`` (mean of the pair's two modalities), ``alignment/<pair>``,
``cross_uniformity/<pair>`` and ``caption/<source>``. A term of weight 0 is not computed.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from clipkit.config.schema import LossConfig, PairTermConfig
from clipkit.models.multimodal import MultiModalModel, split_pair
from clipkit.objectives.collectives import LOCAL, Collectives
from clipkit.objectives.contrastive import clip_loss
from clipkit.objectives.geometry import alignment, cross_uniformity, uniformity
from clipkit.objectives.sigmoid import sigmoid_loss

Tensors = Dict[str, torch.Tensor]


class Objective:
    def __init__(self, cfg: LossConfig, comm: Collectives = LOCAL) -> None:
        self.cfg = cfg
        self.comm = comm

    def __call__(self, model: MultiModalModel, outputs: Tensors, present: Tensors,
                 scale_grad: bool = True) -> Tensors:
        """Loss terms by name and their weighted ``total``.

        ``outputs`` is the model's forward; ``present[m]`` marks the rows that carry modality m;
        a pair is scored on the rows that carry both. ``scale_grad=False`` keeps the learnable
        scales and biases out of this call's gradient.
        """
        cfg, comm = self.cfg, self.comm

        def param(value: torch.Tensor) -> torch.Tensor:
            return value if scale_grad else value.detach()

        pair_terms: Dict[str, tuple] = {
            "contrastive": (cfg.contrastive, lambda a, b, pair, valid: clip_loss(
                a, b, param(model.logit_scale(pair)), comm.gather, cfg.contrastive.local_loss, valid)),
            "sigmoid": (cfg.sigmoid, lambda a, b, pair, valid: sigmoid_loss(
                a, b, param(model.sigmoid_scale(pair)), param(model.sigmoid_bias(pair)), comm, valid)),
            "uniformity": (cfg.uniformity, lambda a, b, pair, valid: (
                uniformity(a, cfg.uniformity.t, comm, valid) + uniformity(b, cfg.uniformity.t, comm, valid)) / 2),
            "alignment": (cfg.alignment, lambda a, b, pair, valid: alignment(a, b, cfg.alignment.alpha, comm, valid)),
            "cross_uniformity": (cfg.cross_uniformity, lambda a, b, pair, valid: cross_uniformity(
                a, b, cfg.cross_uniformity.t, comm, valid)),
        }
        terms: Tensors = {}
        total = next(iter(outputs.values())).new_zeros((), dtype=torch.float32)
        for name, (term_cfg, compute) in pair_terms.items():
            total = total + self._pair_term(name, term_cfg, compute, model, outputs, present, terms)
        if cfg.caption.weight > 0 and model.caption is not None:
            for source in model.caption.sources:
                term = self._caption(outputs[f"caption_nll/{source}"], outputs[f"caption_tokens/{source}"])
                terms[f"caption/{source}"] = term
                total = total + cfg.caption.weight * cfg.caption.source_weights.get(source, 1.0) * term
        terms["total"] = total
        return terms

    @staticmethod
    def _pair_term(name: str, term_cfg: PairTermConfig, compute: Callable, model: MultiModalModel,
                   outputs: Tensors, present: Tensors, terms: Tensors) -> torch.Tensor:
        """Adds ``name/<pair>`` for every pair to ``terms``; returns their weighted sum."""
        weighted = torch.zeros((), device=next(iter(outputs.values())).device)
        if term_cfg.weight <= 0:
            return weighted
        for pair in model.pairs:
            first, second = split_pair(pair)
            term = compute(outputs[first], outputs[second], pair, present[first] & present[second])
            terms[f"{name}/{pair}"] = term
            weighted = weighted + term_cfg.weight * term_cfg.pair_weights.get(pair, 1.0) * term
        return weighted

    def _caption(self, nll: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over the global batch's scored tokens; averaged over processes
        (as DDP averages gradients) it is the global mean."""
        count = self.comm.sum(tokens.sum().float()).detach()
        if count.item() == 0:
            return nll.sum() * 0.0
        return nll.sum() * self.comm.world_size / count
