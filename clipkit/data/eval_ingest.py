"""Eval sets from a user's files, in CLIP_benchmark's webdataset layout (what ``clipkit-eval`` and
``clip_benchmark`` read): a folder of class subfolders (ImageFolder's layout) becomes a zero-shot
classification set, media files with their captions a retrieval set. Files are stored as they
are, under their extension; a set holds one modality, told by its files' extensions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clipkit.data.write import Sample, write_eval_set
from clipkit.errors import DataError
from clipkit.eval.eval_set import file_lines
from clipkit.modalities.base import eval_members

# Prompts for a set without its own templates: CLIP's for images, CLAP's for sounds.
DEFAULT_TEMPLATES = {"image": ("a photo of a {c}.",), "audio": ("this is a sound of {c}.",)}


@dataclass(frozen=True)
class WrittenEvalSet:
    root: Path
    task: str
    modality: str
    samples: int
    shards: int

    def overrides(self) -> str:
        """The overrides adding the set to a run, as a shell takes them (named after its folder)."""
        name = re.sub(r"\W", "_", self.root.name) or "mine"
        key = f"+eval.datasets.{name}"
        modality = f" {key}.modality={self.modality}" if self.modality != "image" else ""
        return f"""'{key}.root="{self.root}"' {key}.task={self.task}{modality}"""


def modality_of(paths: Iterable[Path], where: Path) -> str:
    """The one modality whose eval members the files' extensions are."""
    by_extension = {ext: modality for modality, exts in eval_members().items() for ext in exts}
    found = {by_extension[p.suffix.lower().lstrip(".")] for p in paths}
    if len(found) != 1:
        raise DataError(f"{where}: an eval set holds one modality; found {', '.join(sorted(found)) or 'none'}")
    return found.pop()


def _media(path: Path) -> bool:
    return any(path.suffix.lower().lstrip(".") in exts for exts in eval_members().values())


def _member(path: Path) -> tuple[str, bytes]:
    return path.suffix.lower().lstrip("."), path.read_bytes()


def _lines(path: Path | None, what: str) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    lines = file_lines(path)
    if not lines:
        raise DataError(f"{path}: no {what}")
    return lines


def write_class_folders(
    src: Path,
    out: Path,
    classnames_file: Path | None = None,
    templates_file: Path | None = None,
    split: str = "test",
    per_shard: int = 1000,
) -> WrittenEvalSet:
    """``src/<class>/<file>`` -> a zero-shot classification set. Classes are the subfolders holding
    media, in sorted order (their index is each sample's ``cls``); their names are the folder
    names with underscores as spaces, or the lines of ``classnames_file`` in that order."""
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    classes = [(d, sorted(p for p in d.rglob("*") if _media(p))) for d in sorted(src.iterdir()) if d.is_dir()]
    classes = [(d, files) for d, files in classes if files]
    if not classes:
        raise DataError(f"{src}: no class subfolder holding images or sounds")
    modality = modality_of((f for _, files in classes for f in files), src)
    classnames = _lines(classnames_file, "class names") or [d.name.replace("_", " ") for d, _ in classes]
    if len(classnames) != len(classes):
        raise DataError(
            f"{classnames_file}: {len(classnames)} class names for {len(classes)} class folders "
            f"(one line per folder, in sorted order: {classes[0][0].name}, ...)"
        )
    templates = _lines(templates_file, "templates") or list(DEFAULT_TEMPLATES[modality])
    if bad := [t for t in templates if "{c}" not in t]:
        raise DataError(f"{templates_file}: template without a {{c}} placeholder: {bad[0]!r}")

    def samples() -> Iterator[Sample]:
        index = 0
        for label, (_, files) in enumerate(classes):
            for path in files:
                ext, data = _member(path)
                yield {"__key__": f"{index:09d}", ext: data, "cls": str(label)}
                index += 1

    count = sum(len(files) for _, files in classes)
    shards = write_eval_set(out, samples(), split, per_shard, classnames, templates)
    return WrittenEvalSet(out.resolve(), "zeroshot_classification", modality, count, shards)


def write_captioned(
    pairs: Iterable[tuple[Path, str]], where: Path, out: Path, split: str = "test", per_shard: int = 1000
) -> WrittenEvalSet:
    """(path, caption) pairs, as :func:`clipkit.data.ingest.checked_pairs` returns them -> a retrieval
    set: one sample per file, with every caption given for it (a caption file's lines, or a table's
    rows naming the same file; their order is kept)."""
    captions: dict[Path, list[str]] = {}
    for path, caption in pairs:
        lines = [line.strip() for line in caption.splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path}: empty caption")
        captions.setdefault(path, []).extend(lines)
    if not captions:
        raise DataError(f"{where}: no captioned images or sounds")
    modality = modality_of(captions, where)

    def samples() -> Iterator[Sample]:
        for index, (path, texts) in enumerate(captions.items()):
            ext, data = _member(path)
            yield {"__key__": f"{index:09d}", ext: data, "txt": "\n".join(texts)}

    shards = write_eval_set(out, samples(), split, per_shard, dataset_type="retrieval")
    return WrittenEvalSet(out.resolve(), "retrieval", modality, len(captions), shards)
