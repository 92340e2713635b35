"""The demo's shards and eval sets lie under ``${data.demo_root}``, which only data=demo sets: a
config that keeps one of them without it (data=webdataset on the demo experiment, or a run of one's
own data evaluated with clipkit-eval's eval=demo) would look for it under a folder named 'None'."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

DEMO_ROOT = "${data.demo_root}"


def unrooted_demo_paths(raw: DictConfig) -> list[str]:
    """The keys of the composed (unresolved) config whose value lies under an unset
    ``data.demo_root``: ``data.train.shards`` and ``eval.datasets.<name>.root``."""
    if raw.data.demo_root is not None:
        return []
    keys = []
    if DEMO_ROOT in json.dumps(OmegaConf.to_container(raw.data.train, resolve=False).get("shards")):
        keys.append("data.train.shards")
    for name, dataset in OmegaConf.to_container(raw.eval.datasets, resolve=False).items():
        if DEMO_ROOT in str(dataset.get("root")):
            keys.append(f"eval.datasets.{name}.root")
    return keys
