"""Eval sets in CLIP_benchmark's webdataset layout (what ``clip_benchmark_export_wds`` writes).

ROOT/<split>/nshards.txt, ROOT/<split>/{0..N-1}.tar, plus what the set's task reads (e.g.
zero-shot classification's ROOT/classnames.txt and ROOT/zeroshot_classification_templates.txt).
Samples: an image member (webp|png|jpg|jpeg) and/or an audio member (flac|wav|mp3|ogg), and the
task's target members (``cls``, ``txt``, ``neg.txt``, ...: see :mod:`clipkit.eval.tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from omegaconf import MISSING
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkit.config.checks import RunFacts
from clipkit.data.shards import shard_sizes
from clipkit.errors import ConfigError
from clipkit.eval.eval_set import EvalSet, member
from clipkit.eval.tasks import EVAL_TASKS, EvalTask
from clipkit.eval.tasks.base import stack_targets
from clipkit.lifetime import data_worker_init
from clipkit.modalities.base import Loader, eval_members

log = logging.getLogger(__name__)


@dataclass
class EvalDatasetConfig:
    """``eval.datasets.<name>``: one eval set."""

    root: str = MISSING
    task: str = "zeroshot_classification"  # a registered eval task (clipkit.eval.tasks)
    modality: str = "image"  # what the samples are: image | audio
    split: str = "test"
    # retrieval only: what the items are matched with: text (the captions) or the other
    # modality the samples carry (image <-> audio retrieval)
    against: str = "text"

    def check(self, key: str, run: RunFacts) -> None:
        """What can be checked before the set is opened: the task exists and the model can run it."""
        task_of(self, key).check(key, run, self.modality)


def task_of(cfg: EvalDatasetConfig, key: str) -> EvalTask:
    if cfg.task not in EVAL_TASKS:
        raise ConfigError(f"{key}.task", f"unknown task '{cfg.task}'; use one of {', '.join(EVAL_TASKS.names())}")
    return EVAL_TASKS.get(cfg.task).build()


def open_eval_set(name: str, cfg: EvalDatasetConfig) -> EvalSet:
    key = f"eval.datasets.{name}"
    root = Path(cfg.root).expanduser()
    task = task_of(cfg, key)
    items = eval_members()
    if cfg.modality not in items:
        raise ConfigError(f"{key}.modality", f"unsupported modality '{cfg.modality}' (supported: {', '.join(items)})")
    partners = ("text", *items) if task.partners is None else task.partners
    if cfg.against not in partners or cfg.against == cfg.modality:
        raise ConfigError(f"{key}.against", f"'{cfg.against}' cannot be matched with {cfg.modality} in {cfg.task}")
    nshards_file = root / cfg.split / "nshards.txt"
    if not nshards_file.is_file():
        raise ConfigError(f"{key}.root", f"not a CLIP_benchmark webdataset: {nshards_file} is missing")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError:
        raise ConfigError(f"{key}.root", f"{nshards_file} does not hold a number") from None
    shards = [str(root / cfg.split / f"{i}.tar") for i in range(nshards)]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise ConfigError(f"{key}.root", f"shard not found: {missing[0]}")
    sizes = shard_sizes(shards)
    expected = sum(sizes.values()) if len(sizes) == len(shards) else None
    eval_set = EvalSet(name, cfg.task, cfg.modality, shards, cfg.against, expected_samples=expected)
    task.open(eval_set, root, key)
    return eval_set


class _EvalStream(IterableDataset):
    """(item input, target) per sample, the target as the set's task reads it (a class index, the
    caption list, the partner modality's input, ...); corrupt samples are skipped with a warning."""

    def __init__(self, shards: list[str], eval_set: EvalSet, loaders: dict[str, Loader]) -> None:
        super().__init__()
        self.shards = shards
        self.eval_set = eval_set
        self.loaders = loaders
        self.task: EvalTask = EVAL_TASKS.get(eval_set.task).build()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        info = get_worker_info()
        shards = self.shards[info.id :: info.num_workers] if info else self.shards

        def unreadable(exc: Exception) -> bool:
            log.warning("eval set %s: skipping unreadable shard data: %s", self.eval_set.name, exc)
            return True

        for sample in wds.tarfile_to_samples(handler=unreadable)({"url": u} for u in shards):
            try:
                item = self.loaders[self.eval_set.modality](member(sample, self.eval_set.modality))
                target = self.task.target(sample, self.eval_set, self.loaders)
            except Exception as exc:  # skip the one bad sample, as in training
                log.warning("eval set %s: skipping sample %s: %s", self.eval_set.name, sample.get("__key__"), exc)
                continue
            yield item, target


def _collate(rows: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
    return torch.stack([r[0] for r in rows]), stack_targets([r[1] for r in rows])


def eval_loader(
    eval_set: EvalSet, loaders: dict[str, Loader], batch_size: int, workers: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """This process's share of the eval shards (every world_size-th from its rank)."""
    shards = eval_set.shards[rank::world_size]
    # A generator of its own, so that evaluating never moves the training process's random stream.
    return DataLoader(
        _EvalStream(shards, eval_set, loaders),
        batch_size=batch_size,
        num_workers=min(workers, len(shards)),
        collate_fn=_collate,
        worker_init_fn=data_worker_init,
        generator=torch.Generator(),
    )
