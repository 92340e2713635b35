"""The training loop: data -> model -> objective -> step, with logging, evaluation and checkpoints."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from clipkit import distributed as dist_utils
from clipkit.config.validate import CheckedConfig
from clipkit.data.decode import SampleDecoder
from clipkit.data.negatives import NegativeCaptions
from clipkit.data.pipeline import StreamState, TrainStream, batches, make_loader
from clipkit.data.shards import ShardSource, count_samples
from clipkit.data.text_length import inert_multiple
from clipkit.errors import ConfigError
from clipkit.eval.report import write_report
from clipkit.eval.runner import Evaluator
from clipkit.models.build import ModelBundle, build_bundle
from clipkit.models.clipkit_init import load_clipkit_init
from clipkit.models.multimodal import to_device_async
from clipkit.models.open_clip_init import load_open_clip_init
from clipkit.objectives.collectives import LOCAL, process_group
from clipkit.objectives.objective import Objective, TeacherOutputs
from clipkit.objectives.teacher import load_teacher
from clipkit.train import checkpoint as ckpt
from clipkit.train.checkpoint_manager import CheckpointManager, CheckpointPolicy
from clipkit.train.compile import compile_towers
from clipkit.train.ema import WeightAverage
from clipkit.train.metrics import METRICS_FILE, LossWindow, MetricsLogger, ThroughputWindow, results_table
from clipkit.train.mirror import CheckpointMirror
from clipkit.train.nonfinite import NonfiniteGuard, gradient_norm
from clipkit.train.optim import build_optimizer, build_scheduler, optimizer_errors, reapply_schedule
from clipkit.train.parallel import apply_fsdp, gathered, wrap
from clipkit.train.patch_dropout import switch_off_patch_dropout
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.preemption import Preempted, PreemptionWatch
from clipkit.train.state import ProcessRNG, TrainProgress, seed_everything
from clipkit.train.step import forward_backward

log = logging.getLogger("clipkit")


def locked_without_weights(checked: CheckedConfig) -> list[str]:
    """The frozen towers that neither model.init nor their own weights file fills: almost always a
    forgotten path (a resumed run loads its checkpoint over them later)."""
    from_init = checked.cfg.model.init.taken(frozenset(checked.towers))
    return [
        modality
        for modality, tower in checked.towers.items()
        if tower.lock and not tower.weights and modality not in from_init
    ]


def stacked(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """A step's loss terms as one tensor, in the order of their sorted names."""
    return torch.stack([losses[name].float() for name in sorted(losses)])


class Trainer:
    def __init__(
        self,
        checked: CheckedConfig,
        sources: list[ShardSource],
        run_dir: Path,
        env: dist_utils.DistEnv = dist_utils.DistEnv(),
    ) -> None:
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
        init = cfg.model.init  # a resumed run then loads its checkpoint over it
        if init.open_clip is not None:
            load_open_clip_init(self.bundle.model, init.open_clip, sorted(init.taken(frozenset(checked.towers))))
        if init.clipkit is not None:
            load_clipkit_init(self.bundle.model, init.clipkit, init.towers)
        for modality in locked_without_weights(checked):
            log.warning(
                "model.towers.%s.lock: the %s tower is frozen and no weights are given for it "
                "(model.init.open_clip, model.init.clipkit or model.towers.%s.weights): it stays at its random "
                "initialisation",
                modality,
                modality,
                modality,
            )
        if env.rank:
            seed_everything(cfg.seed + env.rank)
        self.core = self.bundle.model  # the MultiModalModel itself, also under DDP (sharded in place by FSDP)
        self.ema = WeightAverage(self.core, cfg.trainer.ema) if cfg.trainer.ema.decay > 0 else None
        if cfg.trainer.compile:
            compile_towers(self.core)
        self.model = self.core
        if env.joined:
            self.model = wrap(self.core, cfg.trainer.parallel, cfg.trainer.fsdp, cfg.trainer.precision)
            if self.ema is not None and cfg.trainer.parallel == "fsdp":
                self.ema.shard(lambda average: apply_fsdp(average, cfg.trainer.fsdp, cfg.trainer.precision))
        self.objective = Objective(cfg.loss, process_group(env.world_size) if env.distributed else LOCAL)
        self.teacher = load_teacher(cfg.loss.distill, checked, self.device) if cfg.loss.distill.weight > 0 else None
        self.autocast = autocast_factory(cfg.trainer.precision, self.device)  # evaluation, the teacher
        self.step_autocast = autocast_factory(cfg.trainer.precision, self.device, cfg.trainer.fsdp.autocast)
        self.scaler = grad_scaler(cfg.trainer.precision, self.device)
        self.optimizer = build_optimizer(self.core, cfg.optim)
        self.nonfinite = NonfiniteGuard(self.optimizer, self.scaler, cfg.trainer.max_nonfinite_steps)
        self.global_batch = cfg.data.batch_size * cfg.trainer.accum_steps * env.world_size
        self.total_steps = self._total_steps()
        cfg.sched.check_total("sched", self.total_steps)
        if cfg.sched.warmup_steps > self.total_steps and env.is_main:
            log.warning(
                "sched.warmup_steps=%d is longer than the run (%d steps): the rate never reaches optim.lr",
                cfg.sched.warmup_steps,
                self.total_steps,
            )
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.sched)
        self.step_lr = 0.0
        self.evaluator = Evaluator(
            cfg.eval,
            self.bundle.eval_loaders(),
            self.bundle.tokenizer,
            self.device,
            self.autocast,
            env,
            inert_multiple(cfg.eval.text_pad_multiple, checked.towers.get("text")),
        )
        hard_negatives = cfg.loss.contrastive.hard_negatives
        self.decoder = SampleDecoder(
            cfg.data.keys,
            self.bundle.train_loaders(),
            self.bundle.tokenizer,
            NegativeCaptions(hard_negatives) if hard_negatives.source else None,
            cfg.data.text_pad_multiple,
        )
        self.rows_with_negatives = [0, 0]  # rows with a hard negative, rows, since the last log
        self.pass_samples = self._pass_samples()
        self.stream = StreamState(
            workers=cfg.data.workers, endless=cfg.data.train.resampled and self.pass_samples is None
        )
        self.progress = TrainProgress()
        self.loss_window = LossWindow()
        self.unmasked = cfg.trainer.unmasked_final_steps == 0  # the final unmasked phase has begun
        trainer = cfg.trainer
        self.checkpoints = CheckpointManager(
            run_dir / "checkpoints",
            CheckpointPolicy(
                trainer.ckpt_every_n_steps,
                trainer.keep_last_k,
                trainer.resume,
                "sharded" if trainer.parallel == "fsdp" and env.joined else "full",
                trainer.ckpt_async,
                trainer.keep_every_n_steps,
            ),
            self.core,
            self.optimizer,
            shared={"progress": self.progress, "scheduler": self.scheduler, "scaler": self.scaler},
            per_process={"rng": ProcessRNG(), "data": self.stream},
            config_yaml=OmegaConf.to_yaml(OmegaConf.structured(cfg)),
            env=env,
            ema=self.ema,
            mirror=CheckpointMirror(trainer.mirror) if trainer.mirror and env.is_main else None,
        )

    # ------------------------------------------------------------------------------ set-up
    def _total_steps(self) -> int:
        trainer = self.cfg.trainer
        if trainer.max_steps is not None:
            return trainer.max_steps
        num_samples = self.cfg.data.train.num_samples or count_samples(self.sources)
        if not num_samples:
            raise ConfigError(
                "data.train.num_samples",
                "trainer.epochs needs the epoch length: set "
                "data.train.num_samples (or put a sizes.json beside the shards)",
            )
        return max(1, trainer.epochs * (num_samples // self.global_batch))

    def _pass_samples(self) -> int | None:
        """Raw samples a reader slot takes in one pass of a resampled stream: the epoch length
        shared over the slots, if known (data.train.num_samples or sizes.json)."""
        if not self.cfg.data.train.resampled:
            return None
        num_samples = self.cfg.data.train.num_samples or count_samples(self.sources)
        slots = self.env.world_size * max(self.cfg.data.workers, 1)
        return math.ceil(num_samples / slots) if num_samples else None

    def loader(self) -> DataLoader:
        """The loader of every pass from the current one on; what a resumed run had consumed of
        this pass (``self.stream.replay``) is skipped once."""
        stream = TrainStream(
            self.sources,
            self.decoder,
            self.cfg.data.batch_size,
            self.cfg.data.train.resampled,
            self.cfg.data.train.shuffle_buffer,
            self.cfg.seed,
            self.stream.epoch,
            self.env.rank,
            self.env.world_size,
            skip=self.stream.replay,
            first_worker=self.stream.replay_first_worker,
            pass_samples=self.pass_samples,
            bucket_pool=self.cfg.data.bucket_pool,
            skip_offsets=self.stream.replay_offsets,
        )
        return make_loader(stream, self.cfg.data.workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, dict[str, float]]:
        resumed = self.checkpoints.resume()
        if resumed is not None:
            log.info("resumed from %s at step %d", resumed, self.progress.step)
            reapply_schedule(self.scheduler)
            if self.progress.step >= self.total_steps:
                log.info(
                    "the run is complete (%d of %d steps); more steps: raise trainer.max_steps or trainer.epochs",
                    self.progress.step,
                    self.total_steps,
                )
        metrics_log = None
        if self.env.is_main:
            metrics_log = MetricsLogger(
                self.cfg.logger,
                self.run_dir,
                OmegaConf.structured(self.cfg),
                self.cfg.name,
                self.total_steps,
                self.progress.step,
            )
        data = batches(self.loader(), self.stream, lambda have: dist_utils.all_ranks_agree(have, self.device))
        results: dict[str, dict[str, float]] = {}
        try:
            self.model.train()
            with PreemptionWatch() as preemption:
                self._train_steps(data, metrics_log, preemption)
                self.checkpoints.maybe_save(self.progress.step, final=True)
            results = self._evaluate(metrics_log)
        finally:
            data.close()  # shuts the data workers down
            self.checkpoints.close()  # a save still being written in the background is finished
            if metrics_log:
                metrics_log.close()
        if self.env.is_main:
            self._write_report(results)
        return results

    def _train_steps(
        self, data: Iterator[dict], metrics_log: MetricsLogger | None, preemption: PreemptionWatch
    ) -> None:
        """Steps up to the last, each followed by what falls due after it: a log record, an
        evaluation, a checkpoint, or a stop with a checkpoint when the run is preempted."""
        window = ThroughputWindow()
        progress = self.progress
        while progress.step < self.total_steps:
            losses = self._train_step(data, window)
            self.loss_window.add(stacked(losses))
            progress.step += 1
            if progress.step % self.cfg.trainer.log_every_n_steps == 0 or progress.step == self.total_steps:
                record = self._record(losses, window)  # every rank: the values are reduced
                window = ThroughputWindow()
                if metrics_log:
                    metrics_log.log(record)
                    metrics_log.progress(progress.step, record)
                self.nonfinite.stop_if_diverged(progress.step)
            signum = preemption.agreed()
            with window.pause():
                if signum:
                    self._stop(signum)
                if (
                    self.cfg.eval.every_n_steps
                    and progress.step % self.cfg.eval.every_n_steps == 0
                    and progress.step < self.total_steps
                ):
                    self._evaluate(metrics_log)
                self.checkpoints.maybe_save(progress.step)

    def _stop(self, signum: int) -> NoReturn:
        """Preempted: every process saves the step reached (unless just saved), then stops."""
        step = self.progress.step
        if self.checkpoints.last_saved != step:
            self.checkpoints.save(step)
        self.checkpoints.wait()
        raise Preempted(signum, step, self.checkpoints.root / ckpt.step_dir_name(step))

    def model_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every modality of the model; one that no row of the batch carries comes as zeros. Rows
        that the device cannot decode leave the batch's masks and count as skipped samples."""
        inputs = {}
        for m in self.core.modalities:
            feed = self.bundle.feeds[m]
            rows = batch[m] if m in batch else feed.empty(batch["num_rows"])
            if feed.on_device is not None:
                inputs[m], dropped = feed.on_device(rows, batch[f"has_{m}"])
                self.stream.skipped += dropped
            else:
                inputs[m] = to_device_async(rows, self.device)
        if "text_negatives" in batch:
            inputs["text_negatives"] = to_device_async(batch["text_negatives"], self.device)
            self.rows_with_negatives[0] += batch["rows_with_negatives"]
            self.rows_with_negatives[1] += batch["num_rows"]
        return inputs

    def row_masks(self, batch: dict) -> dict[str, torch.Tensor]:
        """The row masks, left on the host (see forward_backward); with a caption head also the
        host's copy of the token ids, where the head finds the tokens it scores."""
        present = {m: batch[f"has_{m}"] for m in self.core.modalities}
        if "text_negatives" in batch:
            present["text_negatives"] = batch["has_text_negatives"]
        if self.core.caption is not None:
            present["text_tokens"] = (
                batch["text"] if "text" in batch else self.bundle.feeds["text"].empty(batch["num_rows"])
            )
        return present

    def _train_step(self, data: Iterator[dict], window: ThroughputWindow) -> dict[str, torch.Tensor]:
        """One optimizer step; returns its loss terms as device tensors, read only when logged (a
        read waits for the GPU, which would otherwise run ahead of the host)."""
        self._end_masking_if_due()
        start = time.perf_counter()
        micro = [next(data) for _ in range(self.cfg.trainer.accum_steps)]
        window.add_step(time.perf_counter() - start)
        inputs = [self.model_inputs(b) for b in micro]
        present = [self.row_masks(b) for b in micro]
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.at_step(self.progress.step)
        losses = forward_backward(
            self.model, self.objective, inputs, present, self.step_autocast, self.scaler, self._teacher_outputs(inputs)
        )
        self.scaler.unscale_(self.optimizer)
        if self.nonfinite.before_step(gradient_norm(self.core.parameters(), self.cfg.trainer.grad_clip_norm)):
            with optimizer_errors(self.cfg.optim.name):
                self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # logged: the rate this step used
        self.scheduler.step()
        self.core.clamp_logit_scales()
        if self.ema is not None:
            self.ema.update(self.core, self.progress.step + 1)
        self.progress.samples_seen += self.global_batch
        return {name: value.detach() for name, value in losses.items()}

    def _end_masking_if_due(self) -> None:
        """trainer.unmasked_final_steps: from that step on, patch dropout is off (also when a run
        resumes inside the final phase)."""
        if not self.unmasked and self.progress.step >= self.total_steps - self.cfg.trainer.unmasked_final_steps:
            self.unmasked = True
            if switch_off_patch_dropout(self.core):
                log.info("step %d on: patch dropout off, every patch is encoded", self.progress.step + 1)

    def _teacher_outputs(self, inputs: list[dict[str, torch.Tensor]]) -> TeacherOutputs | None:
        """The distillation teacher's embeddings of the step's rows (its micro-batches joined)."""
        if self.teacher is None:
            return None
        with self.autocast():
            parts = [self.teacher.embed(x) for x in inputs]
        return TeacherOutputs(
            {m: torch.cat([p[m] for p in parts]) for m in parts[0]},
            {pair: self.teacher.logit_scale(pair) for pair in self.teacher.pairs},
        )

    def _record(self, losses: dict[str, torch.Tensor], window: ThroughputWindow) -> dict:
        """The metrics.jsonl record of the step just taken; collective, so every rank makes it."""
        # Per-process loss values differ (local rows); report their mean, the global-batch loss.
        names = sorted(losses)
        values = torch.cat([stacked(losses), self.loss_window.means()])
        reduced = dist_utils.all_reduce_mean(values).tolist()
        skipped, unreadable = dist_utils.all_reduce_sum(
            torch.tensor([self.stream.skipped, self.stream.unreadable_shards], device=self.device)
        ).tolist()
        record = {
            "step": self.progress.step,
            "samples_seen": self.progress.samples_seen,
            "epoch": self.stream.epoch,
            **{f"loss/{n}": v for n, v in zip(names, reduced)},
            **{f"loss_mean/{n}": v for n, v in zip(names, reduced[len(names) :])},
            "lr": self.step_lr,
            **self.core.scale_metrics(),
            "skipped_samples": int(skipped),
            "unreadable_shards": int(unreadable),
            "nonfinite_steps": self.nonfinite.read(),
        }
        if self.decoder.negatives is not None:  # how many captions the source could contradict
            rows = dist_utils.all_reduce_sum(torch.tensor(self.rows_with_negatives, device=self.device)).tolist()
            record["hard_negatives/row_share"] = rows[0] / max(rows[1], 1)
            self.rows_with_negatives = [0, 0]
        return {**record, **window.rates(self.global_batch)}

    # ------------------------------------------------------------------------------ outputs
    def _evaluate(self, metrics_log: MetricsLogger | None) -> dict[str, dict[str, float]]:
        if not self.evaluator.sets:
            return {}
        evaluated = self.ema.module if self.ema is not None else self.core  # what a checkpoint's readers get
        with gathered(evaluated, self.cfg.trainer.fsdp):
            results = self.evaluator.run(
                evaluated, self.progress.step, self.run_dir / "eval" if self.env.is_main else None
            )
        flat = {f"eval/{name}/{k}": v for name, metrics in results.items() for k, v in metrics.items()}
        if metrics_log:
            metrics_log.log({"step": self.progress.step, "samples_seen": self.progress.samples_seen, **flat})
        return results

    def _write_report(self, results: dict[str, dict[str, float]]) -> None:
        preamble = [
            f"- steps: {self.progress.step}, samples seen: {self.progress.samples_seen}, "
            f"processes: {self.env.world_size}",
            f"- checkpoint: `{ckpt.find_latest(self.run_dir / 'checkpoints')}`",
            "",
        ]
        write_report(
            self.run_dir,
            f"clipkit run: {self.cfg.name}",
            results,
            self.evaluator.pairs,
            self.run_dir / METRICS_FILE,
            preamble,
        )
        for row in results_table(results) if results else []:
            print(row)
