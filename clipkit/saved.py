"""A saved checkpoint back as a model: its own config (with optional overrides) and its weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clipkit.config.checks import did_you_mean
from clipkit.config.demo_paths import DEMO_ROOT, unrooted_demo_paths
from clipkit.config.omegaconf_errors import omegaconf_problem
from clipkit.config.schema import ClipkitConfig
from clipkit.config.validate import CheckedConfig, check_config
from clipkit.errors import CheckpointError, ConfigError
from clipkit.models.build import ModelBundle, build_bundle
from clipkit.plugins import check_plugins
from clipkit.train import checkpoint as ckpt

log = logging.getLogger(__name__)


def load_config(folder: Path, overrides: Sequence[str] = ()) -> CheckedConfig:
    """The checkpoint's config.yaml with overrides in Hydra's forms, checked: ``KEY=VALUE``,
    ``+KEY=VALUE`` and ``++KEY=VALUE`` (the same here: a saved config takes new keys where
    clipkit-train's does, e.g. an eval set), ``~KEY`` (removed, e.g. ``~eval.datasets.shapes``).
    ``eval=NAME`` puts one of the shipped eval presets (``clipkit/conf/eval/NAME.yaml``, e.g.
    ``demo``) in place of the saved eval config, as the same choice does for clipkit-train."""
    check_plugins()  # before the saved config names a plugin's tower or term
    ckpt.require_its_plugins(folder)
    try:
        saved = OmegaConf.load(folder / ckpt.CONFIG_FILE)
    except Exception as exc:
        raise CheckpointError(f"unreadable {folder / ckpt.CONFIG_FILE}: {exc}") from exc
    presets = [o.partition("=")[2] for o in overrides if o.startswith("eval=")]
    if presets:
        saved.eval = eval_preset(presets[-1])
    settings = []
    for override in overrides:
        if override.startswith("~"):
            _remove(saved, override[1:].partition("=")[0])
        elif not override.startswith("eval="):
            settings.append(override.lstrip("+"))
    try:
        raw = OmegaConf.merge(OmegaConf.structured(ClipkitConfig), saved, OmegaConf.from_dotlist(settings))
    except OmegaConfBaseException as exc:
        raise omegaconf_problem(exc) from None
    for key in unrooted_demo_paths(raw):
        if key.startswith("eval."):
            raise ConfigError(
                key,
                f"a demo eval set (under {DEMO_ROOT}), but this run's data.demo_root is unset (it trained on "
                "data of its own); give data.demo_root=DIR, where the demo data lie (~/.cache/clipkit/demo-v3)",
            )
    return check_config(raw)


def _remove(saved: DictConfig, key: str) -> None:
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(saved, parent_key) if parent_key else saved
    if not isinstance(parent, DictConfig) or name not in parent:
        raise ConfigError(key, "not in the checkpoint's config; nothing to remove")
    del parent[name]


def eval_preset(name: str) -> DictConfig:
    from clipkit.config.compose import CONF_DIR  # here: it imports Hydra, which clipkit.load needs not

    presets = sorted(path.stem for path in (CONF_DIR / "eval").glob("*.yaml"))
    if name not in presets:
        raise ConfigError("eval", f"'{name}' is not one of {', '.join(presets)}{did_you_mean(name, presets)}")
    return OmegaConf.load(CONF_DIR / "eval" / f"{name}.yaml")


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
