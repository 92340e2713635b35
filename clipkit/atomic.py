"""Publishing files and folders whole or not at all: checkpoints, the demo data, exports.

A folder is written under a temporary name beside its final one, its files flushed, then renamed
into place and the parent flushed, so a reader (or a run restarted after a crash) sees either the
old contents or all of the new ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Makes the folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flushes every file under root to disk, so a later rename publishes complete contents."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder, name))


def publish_folder(staging: Path, final: Path) -> None:
    """Renames the fully written ``staging`` to ``final``, replacing a folder there."""
    fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    fsync_dir(final.parent)


def replace_file(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a flushed temporary file and a rename."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text, encoding="utf-8")
    fsync_file(staged)
    os.replace(staged, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, published as ``out`` when the block ends normally and
    removed if it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp's folder is private
        publish_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
