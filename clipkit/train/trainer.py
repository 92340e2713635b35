"""The training loop: data -> model -> objective -> step, with logging, evaluation and checkpoints."""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from clipkit.config.validate import CheckedConfig
from clipkit.data.decode import SampleDecoder
from clipkit.data.pipeline import StreamState, TrainStream, batches, make_loader
from clipkit.data.shards import ShardSource, count_samples
from clipkit.errors import ConfigError
from clipkit.eval.runner import Evaluator
from clipkit.models.build import ModelBundle, build_bundle
from clipkit.objectives.objective import Objective
from clipkit.train import checkpoint as ckpt
from clipkit.train.metrics import MetricsLogger, results_table
from clipkit.train.optim import build_optimizer, build_scheduler
from clipkit.train.precision import autocast_factory, grad_scaler

log = logging.getLogger("clipkit")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", "cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:])}


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


class Trainer:
    def __init__(self, checked: CheckedConfig, sources: List[ShardSource], run_dir: Path) -> None:
        self.cfg = checked.cfg
        self.run_dir = run_dir
        self.sources = sources
        cfg = self.cfg
        self.device = pick_device(cfg.trainer.device)
        if cfg.trainer.precision == "fp16" and self.device.type == "cpu":
            log.warning("trainer.precision=fp16 on CPU is emulated and slow; bf16 is the fast choice there")
        seed_everything(cfg.seed)
        self.bundle: ModelBundle = build_bundle(checked, self.device)
        self.model = self.bundle.model
        self.objective = Objective(cfg.loss)
        self.autocast = autocast_factory(cfg.trainer.precision, self.device)
        self.scaler = grad_scaler(cfg.trainer.precision, self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.global_batch = cfg.data.batch_size * cfg.trainer.accum_steps  # x processes, later
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.sched)
        self.evaluator = Evaluator(cfg.eval, self.bundle.eval_image_transform, self.bundle.tokenizer,
                                   self.device, self.autocast)
        self.decoder = SampleDecoder(cfg.data.keys, self.bundle.train_image_transform, self.bundle.tokenizer)
        self.stream = StreamState()
        self.skip: Dict[int, List[int]] = {}
        self.step = 0
        self.samples_seen = 0
        self.skipped_samples = 0
        self.config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))

    # ------------------------------------------------------------------------------ set-up
    def _total_steps(self) -> int:
        trainer = self.cfg.trainer
        if trainer.max_steps is not None:
            return trainer.max_steps
        num_samples = self.cfg.data.train.num_samples or count_samples(self.sources)
        if not num_samples:
            raise ConfigError("data.train.num_samples", "trainer.epochs needs the epoch length: set "
                              "data.train.num_samples (or put a sizes.json beside the shards)")
        return max(1, trainer.epochs * (num_samples // self.global_batch))

    def _loader(self, epoch: int):
        stream = TrainStream(
            self.sources, self.decoder, self.cfg.data.batch_size, self.cfg.data.train.resampled,
            self.cfg.data.train.shuffle_buffer, self.cfg.seed, epoch, rank=0, world_size=1,
            skip=self.skip if epoch == self.stream.epoch else None)
        return make_loader(stream, self.cfg.data.workers)

    def _resume(self) -> None:
        choice = self.cfg.trainer.resume
        if choice is None:
            return
        if choice == "auto":
            folder = ckpt.find_latest(self.run_dir / "checkpoints")
            if folder is None:
                return
        else:
            folder = ckpt.resolve_checkpoint(choice)
        ckpt.load_model_weights(self.model, folder)
        state = ckpt.load_train_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.skipped_samples = state.get("skipped_samples", 0)
        self.stream.epoch = state["data"]["epoch"]
        saved_workers = state["data"]["workers"]
        if self.cfg.data.train.resampled:
            self.stream.epoch += 1  # an endless random stream: continue with fresh draws
        elif saved_workers == self.cfg.data.workers:
            self.skip = {int(k): v for k, v in state["data"]["taken"].items()}
        else:
            log.warning("data.workers changed (%d -> %d): restarting epoch %d from its beginning",
                        saved_workers, self.cfg.data.workers, self.stream.epoch)
        log.info("resumed from %s at step %d", folder, self.step)

    # ------------------------------------------------------------------------------ loop
    def fit(self) -> Dict[str, Dict[str, float]]:
        self._resume()
        metrics_log = MetricsLogger(self.cfg.logger, self.run_dir, OmegaConf.structured(self.cfg),
                                    self.cfg.name, self.total_steps, self.step)
        data = batches(self._loader, self.stream)
        results: Dict[str, Dict[str, float]] = {}
        last_saved = self.step if self.step > 0 else -1
        try:
            self.model.train()
            while self.step < self.total_steps:
                record = self._train_step(data)
                self.step += 1
                if self.step % self.cfg.trainer.log_every_n_steps == 0 or self.step == self.total_steps:
                    metrics_log.log(record)
                    metrics_log.progress(self.step, record)
                if self.cfg.eval.every_n_steps and self.step % self.cfg.eval.every_n_steps == 0 \
                        and self.step < self.total_steps:
                    self._evaluate(metrics_log)
                if self.step % self.cfg.trainer.ckpt_every_n_steps == 0:
                    self._save()
                    last_saved = self.step
            if last_saved != self.step:
                self._save()
            results = self._evaluate(metrics_log)
        finally:
            metrics_log.close()
        self._write_report(results)
        return results

    def _next_micro_batch(self, data: Iterator[dict]) -> dict:
        while True:
            batch = next(data)
            self.stream.update(batch["position"])
            self.skipped_samples += batch["num_skipped"]
            if batch["num_rows"]:
                return batch

    def _inputs(self, batch: dict) -> Dict[str, torch.Tensor]:
        return {m: batch[m].to(self.device, non_blocking=True) for m in self.model.modalities if m in batch}

    def _present(self, batches_: List[dict]) -> Dict[str, torch.Tensor]:
        return {m: torch.cat([b[f"has_{m}"] for b in batches_]).to(self.device) for m in self.model.modalities}

    def _train_step(self, data: Iterator[dict]) -> dict:
        start = time.time()
        accum = self.cfg.trainer.accum_steps
        micro = [self._next_micro_batch(data) for _ in range(accum)]
        data_time = time.time() - start
        inputs = [self._inputs(b) for b in micro]
        present = self._present(micro)
        self.optimizer.zero_grad(set_to_none=True)
        if accum == 1:
            with self.autocast():
                losses = self.objective(self.model, self.model(inputs[0]), present)
            self.scaler.scale(losses["total"]).backward()
        else:
            losses = self._accumulated_backward(inputs, present)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.trainer.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.model.clamp_logit_scales()
        self.samples_seen += self.global_batch
        elapsed = time.time() - start
        record = {"step": self.step + 1, "samples_seen": self.samples_seen, "epoch": self.stream.epoch,
                  **{f"loss/{k}": v.item() for k, v in losses.items()},
                  "lr": self.optimizer.param_groups[0]["lr"],
                  **{f"logit_scale/{p}": self.model.logit_scale(p).item() for p in self.model.pairs},
                  "samples_per_second": self.global_batch / elapsed, "data_time": data_time,
                  "skipped_samples": self.skipped_samples}
        return record

    def _accumulated_backward(self, inputs: List[Dict[str, torch.Tensor]],
                              present: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Negatives span the whole accumulated batch: embed every micro-batch without gradient,
        then re-embed one micro-batch at a time with gradient and back-propagate the full loss.
        The sum over micro-batches is exactly the gradient of one step on the concatenated batch;
        the logit scales take their gradient from the first pass only, for the same reason."""
        with torch.no_grad(), self.autocast():
            cached = [self.model(x) for x in inputs]
        losses: Dict[str, torch.Tensor] = {}
        for j, x in enumerate(inputs):
            with self.autocast():
                live = self.model(x)
                merged = {m: torch.cat([live[m] if i == j else cached[i][m] for i in range(len(inputs))])
                          for m in live}
                losses = self.objective(self.model, merged, present, scale_grad=j == 0)
            self.scaler.scale(losses["total"]).backward()
        return losses

    # ------------------------------------------------------------------------------ outputs
    def _save(self) -> None:
        state = {"step": self.step, "samples_seen": self.samples_seen,
                 "skipped_samples": self.skipped_samples,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(),
                 "data": {"epoch": self.stream.epoch, "workers": self.cfg.data.workers,
                          "taken": {str(k): v for k, v in self.stream.taken.items()}}}
        folder = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, state,
                                      self.config_yaml, self.cfg.trainer.keep_last_k)
        log.info("saved checkpoint %s", folder)

    def _evaluate(self, metrics_log: MetricsLogger) -> Dict[str, Dict[str, float]]:
        if not self.evaluator.sets:
            return {}
        results = self.evaluator.run(self.model, self.step, self.run_dir / "eval")
        flat = {f"eval/{name}/{k}": v for name, metrics in results.items() for k, v in metrics.items()}
        metrics_log.log({"step": self.step, "samples_seen": self.samples_seen, **flat})
        return results

    def _write_report(self, results: Dict[str, Dict[str, float]]) -> None:
        lines = [f"# clipkit run: {self.cfg.name}", "",
                 f"- steps: {self.step}, samples seen: {self.samples_seen}, "
                 f"skipped samples: {self.skipped_samples}",
                 f"- checkpoint: `{ckpt.find_latest(self.run_dir / 'checkpoints')}`", ""]
        if results:
            lines += ["## Evaluation", ""] + results_table(results)
        (self.run_dir / "report.md").write_text("\n".join(lines) + "\n")
        for row in results_table(results) if results else []:
            print(row)
