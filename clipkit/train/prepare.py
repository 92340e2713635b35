"""From a composed config to what training needs, checked: typed config, demo data, shards."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from clipkit.config.demo_paths import DEMO_ROOT, unrooted_demo_paths
from clipkit.config.validate import CheckedConfig, check_config
from clipkit.data.demo import write_demo
from clipkit.data.pipeline import check_reader_slots
from clipkit.data.shards import ShardSource, check_sources_feed_pairs, resolve_sources
from clipkit.distributed import launched, launched_world_size
from clipkit.errors import ConfigError
from clipkit.eval.datasets import open_eval_set
from clipkit.modalities import MODALITIES
from clipkit.models.clipkit_init import init_checkpoint
from clipkit.models.open_clip_init import weights_file

log = logging.getLogger("clipkit")


def demo_pending(checked: CheckedConfig) -> bool:
    root = checked.cfg.data.demo_root
    return root is not None and not (Path(root).expanduser() / "COMPLETE").is_file()


def check_demo_paths(raw: DictConfig) -> None:
    """A run on its own data (data=webdataset) that kept the demo's shards or eval sets."""
    unrooted = unrooted_demo_paths(raw)
    if not unrooted:
        return
    if unrooted[0] == "data.train.shards":
        raise ConfigError(
            unrooted[0],
            f"these are the demo's shards (under {DEMO_ROOT}, which only data=demo sets); "
            "give yours: 'data.train.shards=\"/path/shard-{000000..000099}.tar\"'",
        )
    raise ConfigError(
        unrooted[0],
        f"a demo eval set (under {DEMO_ROOT}, which only data=demo sets); "
        "add eval=none, or name your own sets (eval.datasets.<name>.root)",
    )


def check_inputs(checked: CheckedConfig) -> list[ShardSource]:
    """Shards and eval sets exist and are well formed, each source's samples feed some pair of the
    model, there are enough shards for every process (as the launcher's environment says) and
    data worker, FSDP has processes to shard over, and the weights to start from exist."""
    cfg = checked.cfg
    if cfg.trainer.parallel == "fsdp" and not launched():
        raise ConfigError(
            "trainer.parallel",
            "fsdp needs a process group: start with torchrun or srun (torchrun --nproc_per_node=1 for one process)",
        )
    sources = resolve_sources(cfg.data.train.shards)
    keys = {modality: getattr(cfg.data.keys, modality) for modality in MODALITIES.names()}
    check_sources_feed_pairs(sources, keys, cfg.model.pairs)
    if not cfg.data.train.resampled:
        check_reader_slots(sources, launched_world_size(), cfg.data.workers)
    for name, dataset in cfg.eval.datasets.items():
        open_eval_set(name, dataset)
    if cfg.model.init.open_clip is not None:
        weights_file(cfg.model.init.open_clip)
    if cfg.model.init.clipkit is not None:
        init_checkpoint(cfg.model.init.clipkit)
    if cfg.loss.distill.weight > 0 and not Path(cfg.loss.distill.teacher).expanduser().exists():
        raise ConfigError("loss.distill.teacher", f"no such file or folder: {cfg.loss.distill.teacher}")
    return sources


def precheck(raw: DictConfig) -> None:
    """Everything that can be checked without writing anything (demo data may not exist yet)."""
    checked = check_config(raw)
    check_demo_paths(raw)
    if not demo_pending(checked):
        check_inputs(checked)


def prepare(raw: DictConfig, is_main: bool = True) -> tuple[CheckedConfig, list[ShardSource]]:
    """Checked config and shard sources; the main process generates missing demo data, and the
    others must only call this after it has (see clipkit.cli.train)."""
    checked = check_config(raw)
    check_demo_paths(raw)
    if is_main and demo_pending(checked):
        log.info("generating the demo data set in %s (once; a few seconds)", checked.cfg.data.demo_root)
        write_demo(Path(checked.cfg.data.demo_root))
    return checked, check_inputs(checked)
