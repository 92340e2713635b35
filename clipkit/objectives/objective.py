"""The training objective: the weighted sum of the configured loss terms over the model's pairs."""
from __future__ import annotations

from typing import Dict

import torch

from clipkit.config.schema import LossConfig
from clipkit.models.multimodal import MultiModalModel, split_pair
from clipkit.objectives.contrastive import Gather, clip_loss, no_gather


class Objective:
    def __init__(self, cfg: LossConfig, gather: Gather = no_gather) -> None:
        self.cfg = cfg
        self.gather = gather

    def __call__(self, model: MultiModalModel, embeddings: Dict[str, torch.Tensor],
                 present: Dict[str, torch.Tensor], scale_grad: bool = True) -> Dict[str, torch.Tensor]:
        """Loss terms by name (``contrastive/image_text``, ...) and their weighted ``total``.

        ``present[m]`` marks the rows that carry modality m; a pair is scored on the rows that
        carry both. ``scale_grad=False`` keeps the logit scales out of this call's gradient.
        """
        terms: Dict[str, torch.Tensor] = {}
        total = next(iter(embeddings.values())).new_zeros(())
        contrastive = self.cfg.contrastive
        if contrastive.weight > 0:
            for pair in model.pairs:
                first, second = split_pair(pair)
                scale = model.logit_scale(pair)
                term = clip_loss(embeddings[first], embeddings[second],
                                 scale if scale_grad else scale.detach(), self.gather,
                                 contrastive.local_loss, present[first] & present[second])
                terms[f"contrastive/{pair}"] = term
                total = total + contrastive.weight * contrastive.pair_weights.get(pair, 1.0) * term
        terms["total"] = total
        return terms
