"""Hydra wiring: the schema in Hydra's ConfigStore, the shipped config folder, and composition.

``config.yaml`` lists ``clipkit_schema`` first in its defaults, so every group file is merged into
the typed dataclasses: unknown keys and wrong types fail while composing.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from clipkit.config.schema import ClipkitConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SCHEMA_NAME = "clipkit_schema"
HYDRA_VERSION_BASE = "1.3"


def register_schema() -> None:
    """The root schema, and each registered tower's dataclass as an option of the config group
    ``model/towers/<modality>``: a preset selects a tower by name and gets all its typed fields."""
    from clipkit.models.towers import TOWERS

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=ClipkitConfig)
    for name in TOWERS.names():
        schema = TOWERS.get(name).config_class
        store.store(group=f"model/towers/{schema.MODALITY}", name=name, node=schema)


def compose_config(overrides: Optional[List[str]] = None, config_dir: Optional[str] = None,
                   config_name: str = "config") -> DictConfig:
    """The config ``clipkit-train`` would run with, composed without starting a run.

    ``config_dir`` is a user's extra config folder, searched like ``--config-dir``.
    """
    register_schema()
    overrides = list(overrides or [])
    if config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=HYDRA_VERSION_BASE):
        return compose(config_name=config_name, overrides=overrides)
