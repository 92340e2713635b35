"""Resolving ``data.train.shards`` into weighted lists of shard files, with clear errors."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import braceexpand

from clipkit.errors import ConfigError


@dataclass(frozen=True)
class ShardSource:
    urls: List[str]
    weight: float = 1.0


def _expand(pattern: str, key: str) -> List[str]:
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(key, "empty shard pattern")
    urls: List[str] = []
    for part in pattern.split("::"):  # webdataset's separator for several patterns in one string
        urls.extend(os.path.expanduser(u) for u in braceexpand.braceexpand(part.strip()))
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _check_exist(urls: Sequence[str], key: str) -> None:
    missing = [u for u in urls if _is_local(u) and not Path(u.removeprefix("file://")).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
        raise ConfigError(key, f"shard not found: {missing[0]}{more}")


def resolve_sources(spec: Any, key: str = "data.train.shards") -> List[ShardSource]:
    """A brace pattern, a list of patterns (one source), or a list of {shards, weight} sources.

    Local shard paths must exist; remote URLs (pipe:, http://, s3://) are left to the reader.
    """
    if isinstance(spec, str):
        sources = [ShardSource(_expand(spec, key))]
    elif isinstance(spec, Sequence) and spec and all(isinstance(s, str) for s in spec):
        sources = [ShardSource([u for i, p in enumerate(spec) for u in _expand(p, f"{key}[{i}]")])]
    elif isinstance(spec, Sequence) and spec:
        sources = []
        for i, item in enumerate(spec):
            if not hasattr(item, "get") or "shards" not in item:
                raise ConfigError(f"{key}[{i}]", "a source needs `shards` (and optionally `weight`)")
            unknown = set(item.keys()) - {"shards", "weight"}
            if unknown:
                raise ConfigError(f"{key}[{i}].{sorted(unknown)[0]}", "unknown source key (use shards, weight)")
            weight = item.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{key}[{i}].weight", f"must be a positive number, got {weight!r}")
            patterns = item["shards"] if not isinstance(item["shards"], str) else [item["shards"]]
            urls = [u for p in patterns for u in _expand(p, f"{key}[{i}].shards")]
            sources.append(ShardSource(urls, float(weight)))
    else:
        raise ConfigError(key, f"expected a shard pattern, a list of patterns or of sources; got {spec!r}")
    for i, source in enumerate(sources):
        _check_exist(source.urls, key if len(sources) == 1 else f"{key}[{i}]")
    return sources


def count_samples(sources: Sequence[ShardSource]) -> Optional[int]:
    """Total samples from ``sizes.json`` files beside the shards, or None where one is missing."""
    total = 0
    cache: dict = {}
    for source in sources:
        for url in source.urls:
            path = Path(url.removeprefix("file://"))
            sizes_file = path.parent / "sizes.json"
            if sizes_file not in cache:
                cache[sizes_file] = json.loads(sizes_file.read_text()) if sizes_file.is_file() else None
            sizes = cache[sizes_file]
            if sizes is None or path.name not in sizes:
                return None
            total += int(sizes[path.name])
    return total
