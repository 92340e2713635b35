"""Shards from a user's files: a folder of images or sounds with same-named .txt captions, or a
CSV/JSONL table of (path, caption) rows. Files are stored as they are, under their extension."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from clipkit.data.audio import AUDIO_EXTENSIONS
from clipkit.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS


def _check_media(path: Path) -> None:
    ext = path.suffix.lower().lstrip(".")
    if ext not in MEDIA_EXTENSIONS:
        raise DataError(f"{path}: unsupported file type '.{ext}' (supported: {', '.join(MEDIA_EXTENSIONS)})")
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def checked_pairs(pairs: Iterator[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """All the pairs, each file checked (a media type, present) before any shard is written: a
    table's bad row stops the command before it leaves half a data set behind."""
    listed = list(pairs)
    for path, _ in listed:
        _check_media(path)
    return listed


def folder_pairs(folder: Path) -> Iterator[tuple[Path, str]]:
    """Every media file under ``folder`` that has a ``<same name>.txt`` caption beside it."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = 0
    for path in sorted(folder.rglob("*")):
        caption_file = path.with_suffix(".txt")
        if path.suffix.lower().lstrip(".") in MEDIA_EXTENSIONS and caption_file.is_file():
            found += 1
            yield path, caption_file.read_text(encoding="utf-8").strip()
    if not found:
        raise DataError(f"{folder}: no media file with a same-named .txt caption")


def table_pairs(table: Path, path_column: str, caption_column: str) -> Iterator[tuple[Path, str]]:
    """Rows of a .csv (with a header) or .jsonl file; relative paths are relative to the table."""
    if not table.is_file():
        raise DataError(f"{table}: file not found")
    if table.suffix == ".jsonl":
        rows: list[dict] = [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif table.suffix == ".csv":
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise DataError(f"{table}: expected a .csv or .jsonl file")
    for number, row in enumerate(rows, start=1):
        if path_column not in row or caption_column not in row:
            raise DataError(f"{table}: row {number} lacks column '{path_column}' or '{caption_column}'")
        path = Path(row[path_column]).expanduser()
        yield (path if path.is_absolute() else table.parent / path), str(row[caption_column]).strip()


def samples_from_pairs(pairs: Iterable[tuple[Path, str]]) -> Iterator[dict[str, object]]:
    """Training samples from pairs as :func:`checked_pairs` returns them."""
    for index, (path, caption) in enumerate(pairs):
        # The key is unique even where file stems repeat across folders.
        yield {"__key__": f"{index:09d}", path.suffix.lower().lstrip("."): path.read_bytes(), "txt": caption}
