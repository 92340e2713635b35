"""Checks a composed config before any work: types per tower, value ranges, files that must exist.

Everything raises :class:`ConfigError` naming the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clipkit.config.checks import RunFacts, positive
from clipkit.config.omegaconf_errors import omegaconf_problem
from clipkit.config.schema import ClipkitConfig, EvalDatasetConfig
from clipkit.errors import ConfigError
from clipkit.models.towers import TOWERS, TowerConfig
from clipkit.pairs import split_pair
from clipkit.plugins import check_plugins


def _tower_config(modality: str, node: Any) -> TowerConfig:
    key = f"model.towers.{modality}"
    if not isinstance(node, (dict, DictConfig)) or not node.get("name"):
        raise ConfigError(f"{key}.name", f"each tower needs a name; known: {', '.join(TOWERS.names())}")
    name = node["name"]
    if name not in TOWERS:
        raise ConfigError(f"{key}.name", f"unknown tower '{name}'; known: {', '.join(TOWERS.names())}")
    schema = TOWERS.get(name).config_class
    selected = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if isinstance(selected, type) and issubclass(selected, TowerConfig) and selected is not schema:
        raise ConfigError(
            f"{key}.name",
            f"tower '{name}' has its own fields: select it with "
            f"model/towers/{modality}={name} instead of setting the name",
        )
    if schema.MODALITY != modality:
        raise ConfigError(f"{key}.name", f"tower '{name}' encodes {schema.MODALITY}, not {modality}")
    return _typed(schema, node, key)


def _typed(schema: type, node: Any, key: str) -> Any:
    """``node`` as an instance of the dataclass ``schema``: unknown keys and bad types raise."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as exc:
        raise omegaconf_problem(exc, key, schema) from None


# Counts that may be 0; every other whole number of a tower (a size, a count) must be > 0.
_TOWER_COUNTS_FROM_ZERO = {"unlocked_groups", "unlocked_layers", "freq_mask", "time_mask", "num_masks"}
_TOWER_POSITIVE_REALS = {"clip_seconds", "mlp_ratio"}
_TOWER_REALS_FROM_ZERO = {"f_min"}
_TOWER_RATES = {"drop", "drop_path", "patch_dropout"}  # shares of units or tokens dropped: all of them is no model


def _check_tower_numbers(key: str, tower: TowerConfig) -> None:
    """Sizes and counts of a tower: a negative image_size is named here, not found by the data."""
    for name, value in vars(tower).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            positive(f"{key}.{name}", value, allow_zero=name in _TOWER_COUNTS_FROM_ZERO)
        elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            for i, item in enumerate(value):
                positive(f"{key}.{name}[{i}]", item)
        elif name in _TOWER_POSITIVE_REALS or name in _TOWER_REALS_FROM_ZERO:
            positive(f"{key}.{name}", value, allow_zero=name in _TOWER_REALS_FROM_ZERO)
        elif name in _TOWER_RATES and value is not None and not 0 <= value < 1:
            raise ConfigError(f"{key}.{name}", f"must lie in [0, 1) (0: off), got {value}")


@dataclass
class CheckedConfig:
    """The config as typed objects, towers included."""

    cfg: ClipkitConfig
    towers: dict[str, TowerConfig]


def check_config(raw: DictConfig) -> CheckedConfig:
    check_plugins()  # a plugin's tower or term missing from the config would be named less clearly
    try:
        cfg: ClipkitConfig = OmegaConf.to_object(raw)
    except OmegaConfBaseException as exc:
        raise omegaconf_problem(exc) from None
    # From the composed nodes, not cfg: to_object has already turned typed towers into instances.
    towers = {str(modality): _tower_config(str(modality), node) for modality, node in raw.model.towers.items()}
    if not towers:
        raise ConfigError("model.towers", "no towers configured")
    for modality, tower in towers.items():
        _check_tower_numbers(f"model.towers.{modality}", tower)
        tower.check(f"model.towers.{modality}", cfg.model.embed_dim)
    positive("model.embed_dim", cfg.model.embed_dim)
    for i, pair in enumerate(cfg.model.pairs):
        first, second = split_pair(pair)
        for modality in (first, second):
            if modality not in towers:
                raise ConfigError(
                    f"model.pairs[{i}]", f"pair '{pair}' needs a '{modality}' tower (configured: {', '.join(towers)})"
                )
        if first == second:
            raise ConfigError(f"model.pairs[{i}]", f"pair '{pair}' joins a modality with itself")

    cfg.model.init.check("model.init", frozenset(towers))
    cfg.model.caption.check("model.caption", frozenset(towers), getattr(towers.get("text"), "width", None))
    run = RunFacts(
        towers=frozenset(towers),
        locked=frozenset(m for m, tower in towers.items() if tower.lock),
        pairs=tuple(cfg.model.pairs),
        caption_sources=tuple(cfg.model.caption.sources),
    )
    cfg.loss.check(run)

    data = cfg.data
    positive("data.batch_size", data.batch_size)
    positive("data.workers", data.workers, allow_zero=True)
    positive("data.train.num_samples", data.train.num_samples)
    positive("data.train.shuffle_buffer", data.train.shuffle_buffer, allow_zero=True)
    _check_decode_device(data.decode_device, cfg.trainer.device)
    data.image.check("data.image", data.decode_device)
    data.keys.check("data.keys")
    _check_text_pad_multiple(data.text_pad_multiple, towers.get("text"))
    _check_bucket_pool(data.bucket_pool, data.batch_size, data.text_pad_multiple)

    cfg.trainer.check("trainer")
    cfg.optim.check("optim")
    cfg.sched.check("sched")

    positive("eval.every_n_steps", cfg.eval.every_n_steps, allow_zero=True)
    positive("eval.batch_size", cfg.eval.batch_size)
    if cfg.eval.text_pad_multiple is not None:
        positive("eval.text_pad_multiple", cfg.eval.text_pad_multiple)
    cfg.eval.generation.check("eval.generation")
    # An open mapping in the schema, so that `+eval.datasets.NAME.root=...` can add a set (OmegaConf
    # cannot add a dict to a mapping typed with a dataclass); typed here, each entry.
    cfg.eval.datasets = {
        str(name): _typed(EvalDatasetConfig, node, f"eval.datasets.{name}")
        for name, node in cfg.eval.datasets.items()
        if node is not None
    }  # null: dropped
    for name, dataset in cfg.eval.datasets.items():
        dataset.check(f"eval.datasets.{name}", run)
    return CheckedConfig(cfg, towers)


def _check_bucket_pool(pool: int | None, batch_size: int, text_pad_multiple: int | None) -> None:
    if pool is None:
        return
    if pool < batch_size or pool % batch_size:
        raise ConfigError("data.bucket_pool", f"needs a multiple of data.batch_size ({batch_size}), got {pool}")
    if text_pad_multiple is None:
        raise ConfigError(
            "data.bucket_pool",
            "groups captions of similar length so that data.text_pad_multiple can cut their padding; "
            "set data.text_pad_multiple too (8 or 16)",
        )


def _check_text_pad_multiple(multiple: int | None, text: TowerConfig | None) -> None:
    if multiple is None:
        return
    positive("data.text_pad_multiple", multiple)
    if text is None:
        raise ConfigError("data.text_pad_multiple", "cuts captions' padding, but the model has no text tower")
    if not getattr(text, "padding_is_inert", False):
        raise ConfigError(
            "data.text_pad_multiple",
            f"cutting captions' padding would change what the '{text.name}' text tower computes; it needs "
            "open_clip's causal text transformer pooling the end-of-text or first token "
            "(no_causal_mask=false, pool_type=argmax|first)",
        )


def _check_decode_device(decode_device: str, training_device: str) -> None:
    if decode_device not in ("cpu", "cuda"):
        raise ConfigError("data.decode_device", f"'{decode_device}' is not one of cpu, cuda")
    if decode_device == "cuda" and (training_device == "cpu" or not torch.cuda.is_available()):
        where = "trainer.device=cpu" if training_device == "cpu" else "no CUDA device is available"
        raise ConfigError(
            "data.decode_device", f"cuda decodes JPEGs on the training GPU, but {where}; use data.decode_device=cpu"
        )
