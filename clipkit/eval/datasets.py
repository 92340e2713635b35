"""Eval sets in CLIP_benchmark's webdataset layout (what ``clip_benchmark_export_wds`` writes).

ROOT/<split>/nshards.txt, ROOT/<split>/{0..N-1}.tar, ROOT/classnames.txt,
ROOT/zeroshot_classification_templates.txt (``{c}`` placeholder), ROOT/dataset_type.txt.
Samples: an image member (webp|png|jpg|jpeg) and ``cls`` (int) or ``txt`` (captions, one per line).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkit.config.schema import EvalDatasetConfig
from clipkit.data.decode import decode_image
from clipkit.errors import ConfigError

log = logging.getLogger(__name__)

TASKS = ("zeroshot_classification", "retrieval")
IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")


@dataclass
class EvalSet:
    name: str
    task: str
    modality: str
    shards: List[str]
    classnames: Optional[List[str]] = None
    templates: Optional[List[str]] = None


def _lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_eval_set(name: str, cfg: EvalDatasetConfig) -> EvalSet:
    key = f"eval.datasets.{name}"
    root = Path(cfg.root).expanduser()
    if cfg.task not in TASKS:
        raise ConfigError(f"{key}.task", f"unknown task '{cfg.task}'; use one of {', '.join(TASKS)}")
    if cfg.modality != "image":
        raise ConfigError(f"{key}.modality", f"unsupported modality '{cfg.modality}' (supported: image)")
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
    eval_set = EvalSet(name, cfg.task, cfg.modality, shards)
    if cfg.task == "zeroshot_classification":
        for attr, file in (("classnames", "classnames.txt"),
                           ("templates", "zeroshot_classification_templates.txt")):
            path = root / file
            if not path.is_file():
                raise ConfigError(f"{key}.root", f"zero-shot classification needs {path}")
            setattr(eval_set, attr, _lines(path))
        bad = [t for t in eval_set.templates if "{c}" not in t]
        if bad:
            raise ConfigError(f"{key}.root", f"template without a {{c}} placeholder: {bad[0]!r}")
    return eval_set


Target = Union[int, List[str]]


class _EvalStream(IterableDataset):
    """(image tensor, class index or caption list) per sample; corrupt samples are skipped."""

    def __init__(self, shards: List[str], eval_set: EvalSet, transform: Callable) -> None:
        super().__init__()
        self.shards = shards
        self.eval_set = eval_set
        self.transform = transform

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, Target]]:
        info = get_worker_info()
        shards = self.shards[info.id::info.num_workers] if info else self.shards
        for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)({"url": u} for u in shards):
            try:
                image_key = next(k for k in IMAGE_KEYS if k in sample)
                image = self.transform(decode_image(sample[image_key]))
                if self.eval_set.task == "retrieval":
                    target: Target = [c.strip() for c in sample["txt"].decode("utf-8").splitlines() if c.strip()]
                    if not target:
                        raise ValueError("no captions")
                else:
                    target = int(sample["cls"].decode("utf-8").strip())
            except Exception as exc:  # skip the one bad sample, as in training
                log.warning("eval set %s: skipping sample %s: %s", self.eval_set.name,
                            sample.get("__key__"), exc)
                continue
            yield image, target


def _collate(rows: List[Tuple[torch.Tensor, Target]]) -> Tuple[torch.Tensor, List[Target]]:
    return torch.stack([r[0] for r in rows]), [r[1] for r in rows]


def eval_loader(eval_set: EvalSet, transform: Callable, batch_size: int, workers: int,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """This process's share of the eval shards (every world_size-th from its rank)."""
    shards = eval_set.shards[rank::world_size]
    return DataLoader(_EvalStream(shards, eval_set, transform), batch_size=batch_size,
                      num_workers=min(workers, len(shards)), collate_fn=_collate)
