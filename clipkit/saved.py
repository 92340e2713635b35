"""A saved checkpoint back as a model: its own config (with optional overrides) and its weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clipkit.config.omegaconf_errors import omegaconf_problem
from clipkit.config.schema import ClipkitConfig
from clipkit.config.validate import CheckedConfig, check_config
from clipkit.errors import CheckpointError
from clipkit.models.build import ModelBundle, build_bundle
from clipkit.train import checkpoint as ckpt

log = logging.getLogger(__name__)


def load_config(folder: Path, overrides: Sequence[str] = ()) -> CheckedConfig:
    """The checkpoint's config.yaml with ``KEY=VALUE`` overrides, checked."""
    try:
        saved = OmegaConf.load(folder / ckpt.CONFIG_FILE)
    except Exception as exc:
        raise CheckpointError(f"unreadable {folder / ckpt.CONFIG_FILE}: {exc}") from exc
    try:
        raw = OmegaConf.merge(OmegaConf.structured(ClipkitConfig), saved, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise omegaconf_problem(exc) from None
    return check_config(raw)


def load_checkpoint(
    path: str, device: torch.device, overrides: Sequence[str] = ()
) -> tuple[Path, CheckedConfig, ModelBundle]:
    """A checkpoint folder, or a run folder (its latest checkpoint): the folder, the config and
    the model bundle with the saved weights, in eval mode."""
    folder = ckpt.resolve_checkpoint(path)
    checked = load_config(folder, overrides)
    bundle = build_bundle(checked, device)
    ckpt.load_model_weights(bundle.model, folder)
    if ckpt.has_ema(folder):
        log.info("%s: using the moving average of the weights (trainer.ema)", folder)
    bundle.model.eval()
    return folder, checked, bundle
