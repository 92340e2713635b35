"""Writing webdataset shards: training shards with sizes.json, and eval sets in CLIP_benchmark's layout."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import webdataset as wds

Sample = dict[str, object]  # "__key__" plus one entry per member: bytes, str or int


def write_shards(samples: Iterable[Sample], out_dir: Path, prefix: str, per_shard: int) -> list[Path]:
    """Write ``prefix-000000.tar, ...`` with at most ``per_shard`` samples each, plus ``sizes.json``
    (shard name -> sample count, open_clip's convention) so that epoch lengths are known."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    paths: list[Path] = []
    writer: wds.TarWriter | None = None
    for index, sample in enumerate(samples):
        if index % per_shard == 0:
            if writer is not None:
                writer.close()
            paths.append(out_dir / f"{prefix}-{len(paths):06d}.tar")
            writer = wds.TarWriter(str(paths[-1]))
            sizes[paths[-1].name] = 0
        writer.write(sample)
        sizes[paths[-1].name] += 1
    if writer is not None:
        writer.close()
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return paths


def write_eval_set(
    root: Path,
    samples: Iterable[Sample],
    split: str = "test",
    per_shard: int = 1000,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    dataset_type: str | None = None,
) -> int:
    """An eval set as ``clip_benchmark_export_wds`` writes it: ROOT/split/{0..N-1}.tar + nshards.txt,
    ROOT/classnames.txt, ROOT/zeroshot_classification_templates.txt, ROOT/dataset_type.txt; and
    ROOT/split/sizes.json (samples per shard, which CLIP_benchmark ignores), by which evaluation
    tells when it read fewer samples than the set holds. Returns the number of shards."""
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    writer: wds.TarWriter | None = None
    for index, sample in enumerate(samples):
        if index % per_shard == 0:
            if writer is not None:
                writer.close()
            name = f"{len(sizes)}.tar"
            writer = wds.TarWriter(str(split_dir / name))
            sizes[name] = 0
        writer.write(sample)
        sizes[name] += 1
    if writer is not None:
        writer.close()
    (split_dir / "nshards.txt").write_text(f"{len(sizes)}\n")
    (split_dir / "sizes.json").write_text(json.dumps(sizes))
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    if dataset_type is not None:
        (root / "dataset_type.txt").write_text(dataset_type + "\n")
    return len(sizes)


def numbered(prefix: str, items: Iterable[dict[str, object]]) -> Iterator[Sample]:
    """Give each sample a stable ``__key__``."""
    for index, item in enumerate(items):
        yield {"__key__": f"{prefix}{index:07d}", **item}
