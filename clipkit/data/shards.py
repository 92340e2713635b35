"""Resolving ``data.train.shards`` into weighted lists of shard files, with clear errors."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand
import webdataset as wds

from clipkit.errors import ConfigError


@dataclass(frozen=True)
class ShardSource:
    urls: list[str]
    weight: float = 1.0


def _expand(pattern: str, key: str) -> list[str]:
    """Shard names from a brace pattern (webdataset's and open_clip's form; ``::`` joins several),
    where a local name may also be a glob (``/data/*.tar``) or a folder (its ``.tar`` files),
    both in sorted order, so that every process and every resume sees the same list."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(key, "empty shard pattern")
    urls: list[str] = []
    for part in pattern.split("::"):  # webdataset's separator for several patterns in one string
        try:
            expanded = [os.path.expanduser(u) for u in braceexpand.braceexpand(part.strip())]
        except braceexpand.UnbalancedBracesError:
            raise ConfigError(key, f"unbalanced braces in the shard pattern {part.strip()!r}") from None
        for url in expanded:
            urls.extend(_local_matches(url, key) if _is_local(url) and not url.startswith("pipe:") else [url])
    return urls


def _local_matches(url: str, key: str) -> list[str]:
    path = url.removeprefix("file://")
    if Path(path).is_dir():
        found = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not found:
            raise ConfigError(key, f"{path} is a folder without .tar shards")
        return found
    if glob.has_magic(path):
        found = sorted(p for p in glob.glob(path) if Path(p).is_file())
        if not found:
            raise ConfigError(key, f"no shard matches {path}")
        return found
    return [url]


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _check_exist(urls: Sequence[str], key: str) -> None:
    missing = [u for u in urls if _is_local(u) and not Path(u.removeprefix("file://")).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
        raise ConfigError(key, f"shard not found: {missing[0]}{more}")


def resolve_sources(spec: Any, key: str = "data.train.shards") -> list[ShardSource]:
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


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard, from the ``sizes.json`` files beside them (open_clip's convention), for
    the local shards that one lists."""
    sizes: dict[str, int] = {}
    listings: dict[Path, dict | None] = {}
    for url in urls:
        if not _is_local(url):
            continue
        path = Path(url.removeprefix("file://"))
        listing_file = path.parent / "sizes.json"
        if listing_file not in listings:
            listings[listing_file] = json.loads(listing_file.read_text()) if listing_file.is_file() else None
        listing = listings[listing_file]
        if listing is not None and path.name in listing:
            sizes[url] = int(listing[path.name])
    return sizes


def count_samples(sources: Sequence[ShardSource]) -> int | None:
    """Total samples from ``sizes.json`` files beside the shards, or None where one is missing."""
    urls = [url for source in sources for url in source.urls]
    sizes = shard_sizes(urls)
    return sum(sizes[url] for url in urls) if all(url in sizes for url in urls) else None


def first_samples_members(url: str, count: int = 8) -> list[list[str]]:
    """The member extensions of the first ``count`` samples of a shard, as the training stream
    groups and names them (unreadable parts are left to the stream, which counts them)."""
    samples = wds.tarfile_to_samples(handler=wds.ignore_and_continue)([{"url": url}])
    return [sorted(k for k in sample if not k.startswith("__")) for _, sample in zip(range(count), samples)]


def check_sources_feed_pairs(
    sources: Sequence[ShardSource], keys: dict[str, Sequence[str]], pairs: Sequence[str], key: str = "data.train.shards"
) -> None:
    """Every local source's first samples carry both modalities of some pair of the model (the
    members ``keys`` names for each modality); else the source trains on nothing, as when
    ``data.keys.image=[jpg]`` meets shards of ``png``."""
    for i, source in enumerate(sources):
        if not source.urls or not _is_local(source.urls[0]):
            continue
        url = source.urls[0].removeprefix("file://")
        members = first_samples_members(url)
        if not members:
            continue  # an empty or unreadable first shard: the stream reports it
        carried = [{m for m, exts in keys.items() if any(e in sample for e in exts)} for sample in members]
        if any(set(pair.split("_")) <= modalities for pair in pairs for modalities in carried):
            continue
        seen = sorted({ext for sample in members for ext in sample})
        wanted = "; ".join(f"data.keys.{m}={list(keys[m])}" for m in sorted({m for p in pairs for m in p.split("_")}))
        raise ConfigError(
            key if len(sources) == 1 else f"{key}[{i}]",
            f"the first {len(members)} samples of {url} have members {seen}, which give no pair "
            f"of model.pairs={list(pairs)} both its modalities ({wanted})",
        )
