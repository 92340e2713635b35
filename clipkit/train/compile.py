"""``trainer.compile``: torch.compile (inductor) applied to each tower in place.

Each tower is compiled on its own rather than the whole model: the model's forward picks the rows
that carry each modality (a data-dependent shape), which would break one whole-model graph into
pieces. ``nn.Module.compile`` keeps the module and its
parameter names as they are, so checkpoints, DDP and export see the same model as without it.
Row counts that change from step to step (rows lacking a modality) make the graphs dynamic after
the first recompilation instead of recompiling for every count.
"""

from __future__ import annotations

from clipkit.models.multimodal import MultiModalModel


def compile_towers(model: MultiModalModel) -> None:
    """Each tower's encoder decides what of it is compiled (``compile()``: all of it, unless the
    encoder overrides that, as the audio encoder does for its front end)."""
    for tower in model.towers.values():
        tower.encoder.compile()
