"""Where training metrics go: metrics.jsonl (always), the console, and optionally wandb / tensorboard."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from clipkit.atomic import replace_file


@dataclass
class LoggerConfig:
    console: bool = True
    wandb: bool = False
    wandb_project: str = "clipkit"
    wandb_mode: str = "offline"  # offline | online | disabled; offline never needs the network
    tensorboard: bool = False


log = logging.getLogger("clipkit")
METRICS_FILE = "metrics.jsonl"  # in the run folder


@dataclass
class ThroughputWindow:
    """The steps since the last logged record. Their time is read once, when the record is made
    (after its values reached the host, so the GPU has finished them), less the pauses for
    evaluation and checkpoints: reading a clock after every step would mean waiting for the GPU
    after every step."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    data_time: float = 0.0  # seconds spent waiting for batches
    paused: float = 0.0

    def add_step(self, data_time: float) -> None:
        self.steps += 1
        self.data_time += data_time

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def rates(self, global_batch: int) -> dict[str, float]:
        """``samples_per_second`` over the window, ``data_time``, the mean wait per step, and
        ``data_wait_share``, the share of the window's time spent waiting (the loader sets the
        pace when it is high)."""
        seconds = max(time.perf_counter() - self.started - self.paused, 1e-9)
        steps = max(self.steps, 1)
        return {
            "samples_per_second": global_batch * self.steps / seconds,
            "data_time": self.data_time / steps,
            "data_wait_share": min(self.data_time / seconds, 1.0),
        }


class LossWindow:
    """The loss terms of the steps since the last record, summed on the device (a read per step
    would wait for the GPU). Their mean, ``loss_mean/<term>`` beside the last step's ``loss/<term>``,
    is what shows the trend when records are far apart; a non-finite value (a skipped step) is
    left out of it."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        """``values``: one step's loss terms, stacked in a fixed order."""
        finite = values.isfinite()
        values = torch.where(finite, values, torch.zeros_like(values))
        if self.sums is None:
            self.sums, self.counts = values, finite.float()
        else:
            self.sums, self.counts = self.sums + values, self.counts + finite

    def means(self) -> torch.Tensor:
        """The mean of each term over the window (NaN where no step was finite); starts a new window."""
        means = self.sums / self.counts
        self.sums = self.counts = None
        return means


def _drop_records_after(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (where a resumed run continues); later ones, and a line cut
    short by a kill, belong to steps that will be trained again. Rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    replace_file(path, "".join(kept))


class MetricsLogger:
    """Appends one JSON object per logged step to metrics.jsonl and fans out to the other sinks."""

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        full_config: DictConfig,
        run_name: str,
        total_steps: int,
        start_step: int,
    ) -> None:
        self.cfg = cfg
        _drop_records_after(run_dir / METRICS_FILE, start_step)
        self.file = open(run_dir / METRICS_FILE, "a", encoding="utf-8")
        self.bar: tqdm | None = None
        if cfg.console and sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")
        self.wandb = None
        if cfg.wandb:
            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project,
                name=run_name,
                dir=str(run_dir),
                config=OmegaConf.to_container(full_config, resolve=True),
                mode=cfg.wandb_mode,
                resume="allow",
            )
        self.tensorboard = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)

    def progress(self, step: int, record: dict[str, Any]) -> None:
        """Console: a live bar on a terminal, one line per logged step otherwise."""
        if not self.cfg.console:
            return
        summary = {
            "loss": f"{record['loss/total']:.4g} (mean {record['loss_mean/total']:.4g})",
            "lr": f"{record['lr']:.4g}",
            "samples/s": f"{record['samples_per_second']:.4g}",
            "waiting for data": f"{100 * record['data_wait_share']:.0f}%",
        }
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(summary, refresh=True)
        else:
            log.info("step %d  %s", step, "  ".join(f"{k} {v}" for k, v in summary.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def results_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: one per eval set, its metrics as ``name value``."""
    rows = ["| eval set | metrics |", "|---|---|"]
    for name, metrics in results.items():
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        rows.append(f"| {name} | {shown} |")
    return rows
