"""The model trained by clipkit: one tower per modality and a logit scale per contrastive pair."""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.models.towers import TOWERS, Tower, TowerConfig


def split_pair(pair: str) -> Tuple[str, str]:
    """'image_text' -> ('image', 'text')."""
    first, _, second = pair.partition("_")
    return first, second


class MultiModalModel(nn.Module):
    def __init__(
        self,
        towers: Dict[str, Tower],
        pairs: Iterable[str],
        embed_dim: int,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        self.pairs: List[str] = list(pairs)
        self.logit_scales = nn.ParameterDict(
            {pair: nn.Parameter(torch.tensor(float(init_logit_scale))) for pair in self.pairs}
        )
        self.max_log_logit_scale = math.log(max_logit_scale)
        self.embed_dim = embed_dim

    @property
    def modalities(self) -> List[str]:
        return list(self.towers.keys())

    def encode(self, modality: str, inputs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.towers[modality](inputs)
        return F.normalize(features, dim=-1) if normalize else features

    def logit_scale(self, pair: str) -> torch.Tensor:
        """exp of the learnable log scale; the clamp keeps it at most max_logit_scale."""
        return self.logit_scales[pair].clamp(max=self.max_log_logit_scale).exp()

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """Called after each optimizer step, as CLIP does, so the stored value stays in range."""
        for scale in self.logit_scales.values():
            scale.clamp_(0.0, self.max_log_logit_scale)

    def forward(self, batch: Dict[str, torch.Tensor], present: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """(B, D) normalised embeddings for every modality; rows lacking it (``present[m]`` false)
        are zero. Only present rows are encoded. Where no row has a modality, one row is encoded
        with weight zero, so that every tower is in every step's graph: DDP and the gathers of
        every process then see the same tensors, whichever modalities their batches carry."""
        out = {}
        for modality in self.modalities:
            inputs, rows = batch[modality], present[modality]
            index = rows.nonzero().squeeze(1)
            if index.numel():
                encoded = self.encode(modality, inputs[index])
                out[modality] = encoded.new_zeros(inputs.shape[0], encoded.shape[1]).index_put((index,), encoded)
            else:
                encoded = self.encode(modality, inputs[:1])
                out[modality] = encoded.new_zeros(inputs.shape[0], encoded.shape[1]) + 0.0 * encoded.sum()
        return out


def build_model(embed_dim: int, towers: Dict[str, TowerConfig], pairs: Iterable[str],
                init_logit_scale: float, max_logit_scale: float) -> MultiModalModel:
    built = {modality: TOWERS.get(cfg.name).build(cfg, embed_dim) for modality, cfg in towers.items()}
    return MultiModalModel(built, pairs, embed_dim, init_logit_scale, max_logit_scale)
