"""Runs every configured eval set against a model and writes ``eval/<name>.json``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clipkit import distributed as dist_utils
from clipkit.config.schema import EvalConfig
from clipkit.data.text_length import cut_padding, tokenize
from clipkit.errors import ConfigError
from clipkit.eval.datasets import eval_loader, open_eval_set
from clipkit.eval.eval_set import EvalSet
from clipkit.eval.geometry import geometry_metrics
from clipkit.eval.report import COUNTS
from clipkit.eval.tasks import EVAL_TASKS
from clipkit.modalities.base import Loader
from clipkit.models.caption import PAD_ID
from clipkit.models.multimodal import MultiModalModel

log = logging.getLogger(__name__)

Metrics = dict[str, float]


@dataclass(eq=False)
class Evaluator:
    """Runs every set of ``cfg.datasets`` through the model; the tasks use its helpers below.
    ``loaders``: per modality the model encodes, bytes -> eval input (text goes through
    ``tokenizer``). ``text_pad_multiple``: prompts and captions are encoded cut after the longest
    of each batch, rounded up to this multiple (clipkit.data.text_length); None: full rows."""

    cfg: EvalConfig
    loaders: dict[str, Loader]
    tokenizer: Callable | None
    device: torch.device
    autocast: Callable
    env: dist_utils.DistEnv = dist_utils.DistEnv()
    text_pad_multiple: int | None = None

    def __post_init__(self) -> None:
        cfg, tokenizer, loaders = self.cfg, self.tokenizer, self.loaders
        self.sets: list[EvalSet] = [open_eval_set(name, c) for name, c in cfg.datasets.items()]
        # The last run's matched embeddings per set, for the report's figures.
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor, str, str]] = {}
        for eval_set in self.sets:
            for key, modality in (("modality", eval_set.modality), ("against", eval_set.against)):
                if (modality == "text" and tokenizer is None) or (modality != "text" and modality not in loaders):
                    raise ConfigError(f"eval.datasets.{eval_set.name}.{key}", f"the model has no {modality} tower")

    @torch.no_grad()
    def run(self, model: MultiModalModel, step: int, out_dir: Path | None) -> dict[str, Metrics]:
        """Every process evaluates its share of each set; all get the same metrics. Results are
        written to ``out_dir/<set>.json`` when out_dir is given (by the main process only)."""
        was_training = model.training
        model.eval()
        results: dict[str, Metrics] = {}
        try:
            for eval_set in self.sets:
                start = time.time()
                result = EVAL_TASKS.get(eval_set.task).build().run(self, model, eval_set)
                metrics = result.metrics
                _note_missing_samples(eval_set, metrics)
                results[eval_set.name] = metrics
                log.info(
                    "eval %s (%.1fs): %s",
                    eval_set.name,
                    time.time() - start,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in COUNTS),
                )
                if out_dir is not None:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    record = {
                        "dataset": eval_set.name,
                        "task": eval_set.task,
                        "step": step,
                        "metrics": metrics,
                        **({"examples": result.examples} if result.examples else {}),
                    }
                    (out_dir / f"{eval_set.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        finally:
            model.train(was_training)
        return results

    def encode(self, model: MultiModalModel, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return model.encode(modality, inputs.to(self.device)).float()

    def loader(self, eval_set: EvalSet):
        return eval_loader(
            eval_set, self.loaders, self.cfg.batch_size, self.cfg.workers, self.env.rank, self.env.world_size
        )

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        return dist_utils.gather_rows(rows, self.device).cpu()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, texts, self.text_pad_multiple)

    def encode_texts(self, model: MultiModalModel, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts``, in their order. With ``text_pad_multiple`` they are encoded
        shortest first, so that each batch holds texts of nearly one length and is cut short."""
        embeddings = torch.zeros(len(texts), model.embed_dim, device=self.device)
        if not texts:
            return embeddings
        tokens = self.tokenizer(texts)
        order = torch.arange(len(texts))
        if self.text_pad_multiple is not None:
            order = (tokens != PAD_ID).sum(dim=-1).argsort(stable=True)
        for start in range(0, len(texts), self.cfg.batch_size):
            rows = order[start : start + self.cfg.batch_size]
            batch = (
                tokens[rows] if self.text_pad_multiple is None else cut_padding(tokens[rows], self.text_pad_multiple)
            )
            embeddings[rows.to(self.device)] = self.encode(model, "text", batch)
        return embeddings

    def geometry(self, name: str, x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> Metrics:
        self.pairs[name] = (x, y, x_name, y_name)
        if not self.cfg.geometry_max_pairs:
            return {}
        return geometry_metrics(x, y, x_name, y_name, self.cfg.geometry_max_pairs)


def _note_missing_samples(eval_set: EvalSet, metrics: Metrics) -> None:
    """A set that gave fewer samples than its sizes.json lists (corrupt samples, damaged shards)
    says so in its results: the metrics are over what was read."""
    missing = (eval_set.expected_samples or 0) - int(metrics["num_samples"])
    if missing > 0:
        metrics["missing_samples"] = missing
        log.warning(
            "eval set %s: %d of its %d samples could not be read (see the warnings above); its "
            "metrics are over the other %d",
            eval_set.name,
            missing,
            eval_set.expected_samples,
            metrics["num_samples"],
        )
