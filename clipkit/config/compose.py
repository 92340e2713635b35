"""Hydra wiring: the schema in Hydra's ConfigStore, the shipped config folder, and composition.

``config.yaml`` lists ``clipkit_schema`` first in its defaults, so every group file is merged into
the typed dataclasses: unknown keys and wrong types fail while composing.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from clipkit.config.checks import did_you_mean
from clipkit.config.schema import ClipkitConfig
from clipkit.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SCHEMA_NAME = "clipkit_schema"
HYDRA_VERSION_BASE = "1.3"


def register_schema() -> None:
    """The root schema; each registered tower's dataclass as an option of the config group
    ``model/towers/<modality>``, so a preset selects a tower by name and gets all its typed fields;
    and each open_clip architecture clipkit can build as an option of ``model/arch`` (set at
    ``model``: its embed_dim and every field of its two towers)."""
    from clipkit.models.towers import TOWERS
    from clipkit.models.zoo import ArchRefused, zoo

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=ClipkitConfig)
    for name in TOWERS.names():
        schema = TOWERS.get(name).config_class
        store.store(group=f"model/towers/{schema.MODALITY}", name=name, node=schema)
    for name, arch in zoo().items():
        if not isinstance(arch, ArchRefused):
            store.store(group="model/arch", name=name, node=arch.as_model_node(name), package="model")


def arch_shorthand(overrides: list[str]) -> list[str]:
    """``model.arch=NAME`` as Hydra's choice ``model/arch=NAME`` (with ``model=open_clip`` unless
    another model is chosen), so that the architecture's values come before every other override;
    an architecture clipkit cannot build is refused here, with the reason."""
    from clipkit.models.zoo import ArchRefused, arch_towers

    chosen = [o for o in overrides if o.startswith("model.arch=")]
    if not chosen:
        return overrides
    name = chosen[-1].partition("=")[2]
    try:
        arch_towers(name)
    except KeyError:
        import open_clip

        raise ConfigError(
            "model.arch", f"'{name}' is not one of open_clip.list_models(){did_you_mean(name, open_clip.list_models())}"
        ) from None
    except ArchRefused as refused:
        raise ConfigError("model.arch", f"clipkit cannot build open_clip's '{name}': {refused}") from None
    rest = [o for o in overrides if not o.startswith("model.arch=")]
    if not any(o.startswith("model=") for o in rest):
        rest.append("model=open_clip")
    return [*rest, f"model/arch={name}"]


def compose_config(
    overrides: list[str] | None = None, config_dir: str | None = None, config_name: str = "config"
) -> DictConfig:
    """The config ``clipkit-train`` would run with, composed without starting a run.

    ``config_dir`` is a user's extra config folder, searched like ``--config-dir``.
    """
    register_schema()
    overrides = arch_shorthand(list(overrides or []))
    if config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=HYDRA_VERSION_BASE):
        return compose(config_name=config_name, overrides=overrides)
