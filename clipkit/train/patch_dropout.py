"""The end of patch dropout (FLIP's unmasked tuning): ``trainer.unmasked_final_steps``.

A ViT with ``patch_dropout`` p encodes a random share (1 - p) of its patches in training (open_clip's
and timm's PatchDropout), which makes each step 2-3x cheaper; FLIP then trains a short final phase
on every patch, so that the model meets at the end what evaluation gives it. Both libraries' modules
skip their work when their ``prob`` is 0, which is how the phase switches them off.
"""

from __future__ import annotations

from open_clip.transformer import PatchDropout as OpenClipPatchDropout
from timm.layers import PatchDropout as TimmPatchDropout
from torch import nn


def patch_dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (OpenClipPatchDropout, TimmPatchDropout)) and m.prob > 0]


def switch_off_patch_dropout(model: nn.Module) -> int:
    """Every tower encodes all its patches from now on; returns how many modules were switched."""
    switched = patch_dropouts(model)
    for module in switched:
        module.prob = 0.0
    return len(switched)
