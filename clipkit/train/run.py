"""``train(cfg, run_dir)``: a whole training run in this process, from a composed config. The
``clipkit-train`` command composes the config with Hydra and calls it; so can a notebook, a sweep
or a test (lightning-hydra-template's split of ``train(cfg)`` from the Hydra entry point)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from clipkit import distributed
from clipkit.train.prepare import prepare
from clipkit.train.trainer import Trainer

log = logging.getLogger("clipkit")

Results = dict[str, dict[str, float]]  # eval set -> its metrics


def train(cfg: DictConfig, run_dir: Path) -> Results:
    """Checks ``cfg``, generates the demo data if it names it and it is missing, trains, evaluates
    and writes everything under ``run_dir``; returns the final evaluation's metrics.

    Under torchrun or srun every process calls this and they join one process group (the
    launcher's environment says how); ``run_dir`` is rank 0's. Raises ClipkitError on bad input
    and Preempted when a stop signal ends the run (a checkpoint of the step reached is written)."""
    env = distributed.init_distributed(cfg.trainer.device, cfg.trainer.dist_backend)
    try:
        if not env.is_main:
            logging.getLogger("clipkit").setLevel(logging.WARNING)
        run_dir = _shared_run_dir(run_dir)
        if env.is_main:
            checked, sources = prepare(cfg)
        distributed.barrier()  # the demo data, if it had to be generated, is complete now
        if not env.is_main:
            checked, sources = prepare(cfg, is_main=False)
        return Trainer(checked, sources, run_dir, env).fit()
    finally:
        distributed.shutdown(env)


def _shared_run_dir(own: Path) -> Path:
    """Rank 0's run folder: with a timestamped default, processes started a second apart would
    otherwise each pick their own."""
    shared = Path(distributed.broadcast_object(str(own)))
    if shared != own:
        log.warning("using rank 0's run folder %s (set hydra.run.dir to choose one)", shared)
    return shared
