"""Patch dropout keeps its share of patches in training, none in evaluation, and the final unmasked
phase (trainer.unmasked_final_steps) switches it off for the last steps of a real run."""

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.models.towers import TOWERS
from clipkit.models.towers.image import TimmConfig, ViTConfig
from clipkit.train.patch_dropout import switch_off_patch_dropout
from clipkit.train.prepare import prepare
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides


def _tokens_seen(tower, images) -> int:
    """Tokens entering the tower's blocks (class token included) in one forward."""
    seen = []
    blocks = tower.encoder.transformer if hasattr(tower.encoder, "transformer") else tower.encoder.trunk.blocks
    handle = blocks.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    tower(images)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    "config",
    [
        ViTConfig(image_size=32, patch_size=8, width=32, layers=1, head_width=16, patch_dropout=0.5),
        TimmConfig(model_name="vit_tiny_patch16_224", image_size=224, patch_dropout=0.75),
    ],
)
def test_share_of_patches_kept(config):
    tower = TOWERS.get(config.name).build(config, 16)
    patches = (config.image_size // (8 if config.name == "vit" else 16)) ** 2
    images = torch.randn(2, 3, config.image_size, config.image_size)
    tower.train()
    assert _tokens_seen(tower, images) == 1 + int(patches * (1 - config.patch_dropout))
    tower.eval()
    assert _tokens_seen(tower, images) == 1 + patches
    tower.train()
    assert switch_off_patch_dropout(tower) == 1
    assert _tokens_seen(tower, images) == 1 + patches


def test_last_steps_of_a_run_see_every_patch(small_demo, tmp_path):
    checked, sources = prepare(
        compose_config(
            [
                *demo_overrides(small_demo),
                "eval=none",
                "trainer.max_steps=3",
                "model.towers.image.patch_dropout=0.5",
                "trainer.unmasked_final_steps=1",
            ]
        )
    )
    trainer = Trainer(checked, sources, tmp_path)
    seen = []
    trainer.core.towers["image"].encoder.transformer.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1]) if module.training else None
    )
    trainer.fit()
    patches = (32 // 8) ** 2  # the tiny towers' 32 px images, patch 8 (model=tiny's)
    assert seen == [1 + patches // 2, 1 + patches // 2, 1 + patches]
