"""An example clipkit plugin: a tower and a loss term defined outside clipkit, registered on import.

Use it with ``CLIPKIT_PLUGINS=my_parts PYTHONPATH=examples/plugin clipkit-train
model/towers/image=mlp_image loss.cosine_align.weight=0.5``, or name the module in your package's
``[project.entry-points."clipkit.plugins"]``. Import only clipkit's registry modules here
(``...towers.base``, ``...terms.base``, ``...tasks.base``): the config is built from the registries
after every plugin has registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clipkit.config.checks import positive
from clipkit.models.towers.base import TOWERS, Tower, TowerConfig, finish_tower
from clipkit.objectives.terms.base import PAIR_TERMS, PairBatch, PairTerm, PairTermConfig


@dataclass
class MlpImageConfig(TowerConfig):
    """An image tower of two linear layers over the flattened pixels (``model.towers.image.*``)."""

    MODALITY = "image"

    name: str = "mlp_image"
    image_size: int = 64  # the image modality reads its input size here, as for clipkit's towers
    hidden: int = 256

    def check(self, key: str, embed_dim: int) -> None:
        positive(f"{key}.hidden", self.hidden)


class MlpEncoder(nn.Module):
    """What ``finish_tower`` expects of an encoder: ``lock`` and ``set_grad_checkpointing``."""

    def __init__(self, cfg: MlpImageConfig, embed_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * cfg.image_size**2, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, embed_dim)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)

    def lock(self) -> None:
        self.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass  # too small to be worth it


@TOWERS.register("mlp_image", MlpImageConfig)
def build_mlp_image(cfg: MlpImageConfig, embed_dim: int) -> Tower:
    return finish_tower(MlpEncoder(cfg, embed_dim), cfg)


@dataclass
class CosineAlignConfig(PairTermConfig):
    """``loss.cosine_align``: 1 - the cosine of each row's two embeddings, over the rows that
    carry both (off unless ``loss.cosine_align.weight`` > 0)."""


@PAIR_TERMS.register("cosine_align", CosineAlignConfig)
class CosineAlign(PairTerm):
    def __call__(self, batch: PairBatch) -> torch.Tensor:
        cosine = (batch.a * batch.b).sum(dim=-1)  # the embeddings are unit-norm
        valid = batch.valid.to(cosine.dtype)
        # the mean over the global batch's valid rows, as DDP's gradient averaging expects
        count = self.comm.sum(valid.sum().detach())
        return ((1 - cosine) * valid).sum() * self.comm.world_size / count.clamp(min=1)
