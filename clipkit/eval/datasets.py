"""Eval sets in CLIP_benchmark's webdataset layout (what ``clip_benchmark_export_wds`` writes).

ROOT/<split>/nshards.txt, ROOT/<split>/{0..N-1}.tar, ROOT/classnames.txt,
ROOT/zeroshot_classification_templates.txt (``{c}`` placeholder), ROOT/dataset_type.txt.
Samples: an image member (webp|png|jpg|jpeg) and/or an audio member (flac|wav|mp3|ogg), and
``cls`` (int) or ``txt`` (captions, one per line). Image <-> audio retrieval pairs the two members.

Compositionality sets (``task: compositionality``, SugarCrepe's and ARO's test: must the true
caption score above captions that use the same words to say something else?) hold per sample the
item, ``txt`` (its true caption, the first line), ``neg.txt`` (one or more perturbed captions, one
per line) and optionally ``category.txt`` (e.g. swap_att, replace_rel; "all" where absent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkit.config.schema import EvalDatasetConfig
from clipkit.data.shards import shard_sizes
from clipkit.errors import ConfigError
from clipkit.lifetime import data_worker_init

log = logging.getLogger(__name__)

TASKS = ("zeroshot_classification", "retrieval", "captioning", "compositionality")
MEMBERS = {"image": ("webp", "png", "jpg", "jpeg"), "audio": ("flac", "wav", "mp3", "ogg")}


@dataclass
class EvalSet:
    name: str
    task: str
    modality: str
    shards: list[str]
    against: str = "text"
    classnames: list[str] | None = None
    templates: list[str] | None = None
    expected_samples: int | None = None  # from sizes.json beside the shards, if it lists them all


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_eval_set(name: str, cfg: EvalDatasetConfig) -> EvalSet:
    key = f"eval.datasets.{name}"
    root = Path(cfg.root).expanduser()
    if cfg.task not in TASKS:
        raise ConfigError(f"{key}.task", f"unknown task '{cfg.task}'; use one of {', '.join(TASKS)}")
    if cfg.modality not in MEMBERS:
        raise ConfigError(f"{key}.modality", f"unsupported modality '{cfg.modality}' (supported: image, audio)")
    partners = ("text", *MEMBERS) if cfg.task == "retrieval" else ("text",)
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
    if cfg.task == "zeroshot_classification":
        for attr, file in (("classnames", "classnames.txt"), ("templates", "zeroshot_classification_templates.txt")):
            path = root / file
            if not path.is_file():
                raise ConfigError(f"{key}.root", f"zero-shot classification needs {path}")
            setattr(eval_set, attr, _lines(path))
            if not getattr(eval_set, attr):
                raise ConfigError(f"{key}.root", f"{path} is empty")
        bad = [t for t in eval_set.templates if "{c}" not in t]
        if bad:
            raise ConfigError(f"{key}.root", f"template without a {{c}} placeholder: {bad[0]!r}")
    return eval_set


@dataclass(frozen=True)
class Composition:
    """A compositionality sample's texts: the true caption, the perturbed ones, their category."""

    caption: str
    negatives: list[str]
    category: str


Target = int | list[str] | torch.Tensor | Composition
Loader = Callable[[bytes], torch.Tensor]  # a sample member's bytes -> model input


def _member(sample: dict, modality: str) -> bytes:
    key = next((k for k in MEMBERS[modality] if k in sample), None)
    if key is None:
        raise ValueError(f"no {modality} member (one of {', '.join(MEMBERS[modality])})")
    return sample[key]


class _EvalStream(IterableDataset):
    """(item input, target) per sample, the target being a class index, the caption list or the
    partner modality's input; corrupt samples are skipped with a warning."""

    def __init__(self, shards: list[str], eval_set: EvalSet, loaders: dict[str, Loader]) -> None:
        super().__init__()
        self.shards = shards
        self.eval_set = eval_set
        self.loaders = loaders

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Target]]:
        info = get_worker_info()
        shards = self.shards[info.id :: info.num_workers] if info else self.shards

        def unreadable(exc: Exception) -> bool:
            log.warning("eval set %s: skipping unreadable shard data: %s", self.eval_set.name, exc)
            return True

        for sample in wds.tarfile_to_samples(handler=unreadable)({"url": u} for u in shards):
            try:
                item = self.loaders[self.eval_set.modality](_member(sample, self.eval_set.modality))
                if self.eval_set.task == "zeroshot_classification":
                    target: Target = int(sample["cls"].decode("utf-8").strip())
                elif self.eval_set.task == "compositionality":
                    target = _composition(sample)
                elif self.eval_set.against == "text":
                    target = [c.strip() for c in sample["txt"].decode("utf-8").splitlines() if c.strip()]
                    if not target:
                        raise ValueError("no captions")
                else:
                    target = self.loaders[self.eval_set.against](_member(sample, self.eval_set.against))
            except Exception as exc:  # skip the one bad sample, as in training
                log.warning("eval set %s: skipping sample %s: %s", self.eval_set.name, sample.get("__key__"), exc)
                continue
            yield item, target


def _composition(sample: dict) -> Composition:
    caption = next((c.strip() for c in sample["txt"].decode("utf-8").splitlines() if c.strip()), "")
    negatives = [c.strip() for c in sample.get("neg.txt", b"").decode("utf-8").splitlines() if c.strip()]
    if not caption or not negatives:
        raise ValueError("a compositionality sample needs a caption (txt) and at least one perturbed one (neg.txt)")
    category = sample.get("category.txt", b"").decode("utf-8").strip() or "all"
    return Composition(caption, negatives, category)


def _collate(rows: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target] | torch.Tensor]:
    targets = [r[1] for r in rows]
    if targets and isinstance(targets[0], torch.Tensor):
        return torch.stack([r[0] for r in rows]), torch.stack(targets)
    return torch.stack([r[0] for r in rows]), targets


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
