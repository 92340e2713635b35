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
from torch.utils.data import DataLoader

from clipkit import distributed as dist_utils
from clipkit.config.validate import CheckedConfig
from clipkit.data.decode import SampleDecoder
from clipkit.data.pipeline import StreamState, TrainStream, batches, make_loader
from clipkit.data.shards import ShardSource, count_samples
from clipkit.errors import ConfigError
from clipkit.eval.report import write_report
from clipkit.eval.runner import Evaluator
from clipkit.models.build import ModelBundle, build_bundle
from clipkit.models.multimodal import to_device_async
from clipkit.objectives.collectives import LOCAL, process_group
from clipkit.objectives.objective import Objective
from clipkit.train import checkpoint as ckpt
from clipkit.train.compile import compile_towers
from clipkit.train.metrics import MetricsLogger, ThroughputWindow, results_table
from clipkit.train.optim import build_optimizer, build_scheduler
from clipkit.train.parallel import full_state, gathered, load_full_model_state, load_full_optimizer_state, wrap
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.step import forward_backward

log = logging.getLogger("clipkit")


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
    def __init__(self, checked: CheckedConfig, sources: List[ShardSource], run_dir: Path,
                 env: dist_utils.DistEnv = dist_utils.DistEnv()) -> None:
        self.cfg = checked.cfg
        self.run_dir = run_dir
        self.sources = sources
        self.env = env
        cfg = self.cfg
        self.device = env.device
        if cfg.trainer.precision == "fp16" and self.device.type == "cpu":
            log.warning("trainer.precision=fp16 on CPU is emulated and slow; bf16 is the fast choice there")
        # Every rank draws the same initial weights (FSDP shards them as they are; DDP would copy
        # rank 0's), then moves to a random stream of its own.
        seed_everything(cfg.seed)
        self.bundle: ModelBundle = build_bundle(checked, self.device)
        if env.rank:
            seed_everything(cfg.seed + env.rank)
        self.core = self.bundle.model  # the MultiModalModel itself, also under DDP (sharded in place by FSDP)
        if cfg.trainer.compile:
            compile_towers(self.core)
        self.model = self.core
        if env.joined:
            self.model = wrap(self.core, cfg.trainer.parallel, cfg.trainer.fsdp, cfg.trainer.precision)
        self.objective = Objective(cfg.loss, process_group(env.world_size) if env.distributed else LOCAL)
        self.autocast = autocast_factory(cfg.trainer.precision, self.device)
        self.scaler = grad_scaler(cfg.trainer.precision, self.device)
        self.optimizer = build_optimizer(self.core, cfg.optim)
        self.global_batch = cfg.data.batch_size * cfg.trainer.accum_steps * env.world_size
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.sched)
        self.evaluator = Evaluator(cfg.eval, self.bundle.eval_loaders(), self.bundle.tokenizer,
                                   self.device, self.autocast, env)
        self.decoder = SampleDecoder(cfg.data.keys, self.bundle.train_image_transform, self.bundle.tokenizer,
                                     self.bundle.train_audio_loader)
        self.stream = StreamState()
        self.skip: Dict[int, List[int]] = {}
        self.step = 0
        self.samples_seen = 0
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

    def _loader(self) -> DataLoader:
        """The loader of every pass from the current one on; ``self.skip``, what a resumed run had
        consumed of this pass, is skipped once."""
        stream = TrainStream(
            self.sources, self.decoder, self.cfg.data.batch_size, self.cfg.data.train.resampled,
            self.cfg.data.train.shuffle_buffer, self.cfg.seed, self.stream.epoch, self.env.rank,
            self.env.world_size, skip=self.skip)
        return make_loader(stream, self.cfg.data.workers, pin_memory=self.device.type == "cuda")

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
        ckpt.load_model_weights(self.core, folder, load_full_model_state)
        state = ckpt.load_train_state(folder)
        load_full_optimizer_state(self.core, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        data = state["data"]
        per_rank = data["ranks"]  # one entry per process of the saved run
        same_layout = len(per_rank) == self.env.world_size and data["workers"] == self.cfg.data.workers
        if same_layout:
            restore_rng_state(per_rank[self.env.rank]["rng"])
        else:
            seed_everything(self.cfg.seed + self.env.rank + self.step)
        self.stream.epoch = data["epoch"]
        self.stream.skipped = data["skipped"] if self.env.is_main else 0
        if self.cfg.data.train.resampled:
            self.stream.epoch += 1  # an endless random stream: continue with fresh draws
        elif same_layout:
            self.skip = {int(k): v for k, v in per_rank[self.env.rank]["taken"].items()}
        else:
            log.warning("processes x data.workers changed (%d x %d -> %d x %d): restarting epoch %d "
                        "from its beginning", len(per_rank), data["workers"], self.env.world_size,
                        self.cfg.data.workers, self.stream.epoch)
        log.info("resumed from %s at step %d", folder, self.step)

    # ------------------------------------------------------------------------------ loop
    def fit(self) -> Dict[str, Dict[str, float]]:
        self._resume()
        metrics_log = None
        if self.env.is_main:
            metrics_log = MetricsLogger(self.cfg.logger, self.run_dir, OmegaConf.structured(self.cfg),
                                        self.cfg.name, self.total_steps, self.step)
        data = batches(self._loader(), self.stream,
                       lambda have: dist_utils.all_ranks_agree(have, self.device))
        results: Dict[str, Dict[str, float]] = {}
        last_saved = self.step if self.step > 0 else -1
        window = ThroughputWindow()
        try:
            self.model.train()
            while self.step < self.total_steps:
                losses = self._train_step(data, window)
                self.step += 1
                if self.step % self.cfg.trainer.log_every_n_steps == 0 or self.step == self.total_steps:
                    record = self._record(losses, window)  # every rank: the values are reduced
                    window = ThroughputWindow()
                    if metrics_log:
                        metrics_log.log(record)
                        metrics_log.progress(self.step, record)
                with window.pause():
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
            if metrics_log:
                metrics_log.close()
        if self.env.is_main:
            self._write_report(results)
        return results

    def _inputs(self, batch: dict) -> Dict[str, torch.Tensor]:
        """Every modality of the model; one that no row of the batch carries comes as zeros."""
        rows = batch["num_rows"]
        return {m: to_device_async(batch[m] if m in batch else self.bundle.empty_inputs(m, rows), self.device)
                for m in self.core.modalities}

    def _present(self, batch: dict) -> Dict[str, torch.Tensor]:
        """The row masks, left on the host: see forward_backward."""
        return {m: batch[f"has_{m}"] for m in self.core.modalities}

    def _train_step(self, data: Iterator[dict], window: ThroughputWindow) -> Dict[str, torch.Tensor]:
        """One optimizer step; returns its loss terms as device tensors, read only when logged (a
        read waits for the GPU, which would otherwise run ahead of the host)."""
        start = time.perf_counter()
        micro = [next(data) for _ in range(self.cfg.trainer.accum_steps)]
        window.add_step(time.perf_counter() - start)
        inputs = [self._inputs(b) for b in micro]
        present = [self._present(b) for b in micro]
        self.optimizer.zero_grad(set_to_none=True)
        losses = forward_backward(self.model, self.objective, inputs, present, self.autocast, self.scaler)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.trainer.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.core.parameters(), self.cfg.trainer.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.core.clamp_logit_scales()
        self.samples_seen += self.global_batch
        return {name: value.detach() for name, value in losses.items()}

    def _record(self, losses: Dict[str, torch.Tensor], window: ThroughputWindow) -> dict:
        """The metrics.jsonl record of the step just taken; collective, so every rank makes it."""
        # Per-process loss values differ (local rows); report their mean, the global-batch loss.
        names = sorted(losses)
        reduced = dist_utils.all_reduce_mean(torch.stack([losses[n].float() for n in names])).tolist()
        skipped = dist_utils.all_reduce_sum(torch.tensor([self.stream.skipped], device=self.device))
        record = {"step": self.step, "samples_seen": self.samples_seen, "epoch": self.stream.epoch,
                  **{f"loss/{n}": v for n, v in zip(names, reduced)},
                  "lr": self.optimizer.param_groups[0]["lr"],
                  **self.core.scale_metrics(),
                  "skipped_samples": int(skipped.item())}
        return {**record, **window.rates(self.global_batch)}

    # ------------------------------------------------------------------------------ outputs
    def _save(self) -> None:
        """Rank 0 writes; every rank contributes its RNG state and data position (and its shards
        of the weights and optimizer state under FSDP)."""
        per_rank = dist_utils.gather_objects(
            {"rng": rng_state(), "taken": {str(k): v for k, v in self.stream.taken.items()}})
        skipped = dist_utils.gather_objects(self.stream.skipped)
        weights, optimizer_state = full_state(self.core, self.optimizer)
        if self.env.is_main:
            state = {"step": self.step, "samples_seen": self.samples_seen,
                     "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(),
                     "data": {"epoch": self.stream.epoch, "workers": self.cfg.data.workers,
                              "skipped": sum(skipped), "ranks": per_rank}}
            folder = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, weights, state,
                                          self.config_yaml, self.cfg.trainer.keep_last_k)
            log.info("saved checkpoint %s", folder)
        dist_utils.barrier()

    def _evaluate(self, metrics_log: Optional[MetricsLogger]) -> Dict[str, Dict[str, float]]:
        if not self.evaluator.sets:
            return {}
        with gathered(self.core, self.cfg.trainer.fsdp):
            results = self.evaluator.run(self.core, self.step, self.run_dir / "eval" if self.env.is_main else None)
        flat = {f"eval/{name}/{k}": v for name, metrics in results.items() for k, v in metrics.items()}
        if metrics_log:
            metrics_log.log({"step": self.step, "samples_seen": self.samples_seen, **flat})
        return results

    def _write_report(self, results: Dict[str, Dict[str, float]]) -> None:
        preamble = [f"- steps: {self.step}, samples seen: {self.samples_seen}, processes: {self.env.world_size}",
                    f"- checkpoint: `{ckpt.find_latest(self.run_dir / 'checkpoints')}`", ""]
        write_report(self.run_dir, f"clipkit run: {self.cfg.name}", results, self.evaluator.pairs,
                     self.run_dir / "metrics.jsonl", preamble)
        for row in results_table(results) if results else []:
            print(row)
