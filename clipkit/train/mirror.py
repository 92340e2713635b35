"""trainer.mirror: every published checkpoint copied to a second place, for a run to resume from
when its own disk is gone (a preempted cloud machine's local disk, a scratch file system wiped).

The place is a folder or any fsspec URL (``s3://bucket/runs/mine`` with s3fs installed, ``gs://``
with gcsfs, ...), laid out as the run folder is: ``checkpoints/step_NNNNNNN/``, ``checkpoints/latest``
and ``metrics.jsonl``. A checkpoint is copied by a background thread once it is published, so
training goes on meanwhile; the mirror's ``latest`` is written after the folder's last file, so it
names complete copies only (object stores have no atomic rename), and the checkpoints that the
run's own folder no longer keeps are deleted there too. The next save waits for the copy before it,
and so do the end of the run and a preempted run's last save. A copy that fails is a warning:
training goes on, and the next checkpoint is copied whole.

A resume with ``trainer.resume=auto`` that finds no checkpoint in the run folder copies the mirror's
latest one into it first (and its metrics.jsonl, where the run folder has none); its files are then
checked against its manifest like any checkpoint's.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import fsspec

from clipkit.atomic import replace_file
from clipkit.errors import CheckpointError, ConfigError
from clipkit.train import checkpoint as ckpt
from clipkit.train.metrics import METRICS_FILE

log = logging.getLogger(__name__)


def check_mirror(url: str | None) -> None:
    """A mirror fsspec can reach (its protocol known, its package installed), or none."""
    if url is None:
        return
    try:
        fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError("trainer.mirror", f"cannot use {url}: {exc}") from None


class CheckpointMirror:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.checkpoints = f"{root.rstrip('/')}/checkpoints"
        self.run = root.rstrip("/")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="clipkit-mirror")
        self._pending: Future | None = None

    def upload(self, folder: Path, kept: list[str], metrics: Path) -> None:
        """Copies the published ``folder`` in the background, then the run's ``metrics`` as they
        are now, and deletes the mirror's checkpoints not named in ``kept``."""
        self.wait()
        self._pending = self._writer.submit(self._upload, folder, kept, metrics)

    def _upload(self, folder: Path, kept: list[str], metrics: Path) -> None:
        """A failed copy (the network, the store) is a warning, not the end of the run: training
        goes on, and the next checkpoint is copied whole."""
        try:
            self._copy(folder, kept, metrics)
        except Exception as exc:  # any failure of the store's client
            log.warning("copying checkpoint %s to trainer.mirror=%s failed: %s", folder.name, self.url, exc)

    def _copy(self, folder: Path, kept: list[str], metrics: Path) -> None:
        remote = f"{self.checkpoints}/{folder.name}"
        if self.fs.exists(remote):  # the same step saved before (a re-run of a finished run)
            self.fs.rm(remote, recursive=True)
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            target = f"{remote}/{file.relative_to(folder).as_posix()}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(file), target)
        self.fs.pipe_file(f"{self.checkpoints}/{ckpt.LATEST_FILE}", f"{folder.name}\n".encode())
        for stale in self._steps():
            if stale not in kept:
                self.fs.rm(f"{self.checkpoints}/{stale}", recursive=True)
        if metrics.is_file():
            self.fs.put_file(str(metrics), f"{self.run}/{METRICS_FILE}")
        log.info("mirrored checkpoint %s to %s", folder.name, self.url)

    def _steps(self) -> list[str]:
        if not self.fs.isdir(self.checkpoints):
            return []
        names = (path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(self.checkpoints, detail=False))
        return sorted(name for name in names if ckpt.STEP_DIR.match(name))

    def wait(self) -> None:
        """Until the copy in flight (if any) is done."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        self._writer.shutdown()

    def fetch_latest(self, local: Path) -> Path | None:
        """The mirror's latest checkpoint copied into the checkpoints folder ``local`` (and named
        in its ``latest``), or None when the mirror holds none. A failure is one CheckpointError."""
        try:
            return self._fetch_latest(local)
        except CheckpointError:
            raise
        except Exception as exc:  # any failure of the store's client
            raise CheckpointError(f"copying the latest checkpoint from trainer.mirror={self.url}: {exc}") from exc

    def _fetch_latest(self, local: Path) -> Path | None:
        pointer = f"{self.checkpoints}/{ckpt.LATEST_FILE}"
        if not self.fs.isfile(pointer):
            return None
        name = self.fs.cat_file(pointer).decode().strip()
        if not ckpt.STEP_DIR.match(name):
            raise CheckpointError(f"trainer.mirror={self.url}: checkpoints/latest names no checkpoint ({name!r})")
        remote = f"{self.checkpoints}/{name}"
        if not self.fs.isdir(remote):
            raise CheckpointError(f"trainer.mirror={self.url}: checkpoints/latest names {name}, which it does not hold")
        local.mkdir(parents=True, exist_ok=True)
        staging = ckpt.staging_dir(local, int(ckpt.STEP_DIR.match(name).group(1)))  # cleared if left by a kill
        shutil.rmtree(staging, ignore_errors=True)
        for path in self.fs.find(remote):
            target = staging / path[len(remote) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))
        final = local / name
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        replace_file(local / ckpt.LATEST_FILE, f"{name}\n")
        metrics = local.parent / METRICS_FILE  # the curves so far, where the run folder lost them too
        if not metrics.exists() and self.fs.isfile(f"{self.run}/{METRICS_FILE}"):
            self.fs.get_file(f"{self.run}/{METRICS_FILE}", str(metrics))
        log.info("copied checkpoint %s from trainer.mirror=%s to resume from", name, self.url)
        return final
