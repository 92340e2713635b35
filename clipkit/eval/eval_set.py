"""An opened eval set, and how its samples' members are read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipkit.errors import DataError
from clipkit.modalities.base import eval_members


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


def file_lines(path: Path) -> list[str]:
    """A text file's non-blank lines, stripped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def member_lines(sample: dict, key: str) -> list[str]:
    """A text member's non-blank lines, stripped; none where the sample lacks the member."""
    return [line.strip() for line in sample.get(key, b"").decode("utf-8").splitlines() if line.strip()]


def member(sample: dict, modality: str) -> bytes:
    extensions = eval_members()[modality]
    key = next((k for k in extensions if k in sample), None)
    if key is None:
        raise ValueError(f"no {modality} member (one of {', '.join(extensions)})")
    return sample[key]


def require_samples(eval_set: EvalSet, count: int) -> None:
    if count == 0:
        raise DataError(
            f"eval set {eval_set.name}: not one readable sample in its {len(eval_set.shards)} "
            "shard(s) (see the warnings above for why each was skipped)"
        )
