"""Preemption: a run told to stop saves a checkpoint at the step it reached, then exits.

Schedulers warn before they kill: SLURM sends SIGTERM at a time limit or ``scancel`` (and the
signal of ``sbatch --signal``, SIGUSR1 in clipkit's script, ahead of the limit), cloud schedulers
SIGTERM, a terminal SIGINT. Each process only notes the signal (a handler may run between any two
bytecodes, so it does nothing else); after every step the processes agree on whether any of them
got one (a MAX all-reduce of host integers: gloo, never waiting for the GPU) and all stop at the
same step. The command then exits with :data:`EXIT_PREEMPTED`. A second SIGINT stops at once, as
Ctrl-C twice does elsewhere.

After SIGUSR1 under SLURM, rank 0 also asks SLURM to requeue the job (``scontrol requeue``, which
SLURM grants to jobs submitted with ``--requeue``); the requeued job keeps its id, hence its run
folder, and resumes from the checkpoint (``trainer.resume=auto``). SIGTERM does not requeue: SLURM
sends it for ``scancel`` too, and requeues preempted jobs itself where its PreemptMode says so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from clipkit import distributed as dist_utils
from clipkit.lifetime import STOP_SIGNALS

log = logging.getLogger("clipkit")

# sysexits' EX_TEMPFAIL, "try again later": the run stopped early, resumable, not failed.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Raised by the trainer once the checkpoint of the step reached is saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; saved {checkpoint}, "
            "from which trainer.resume=auto (the default) continues"
        )
        self.signum = signum
        self.step = step


class PreemptionWatch:
    """Notes the preemption signals while installed (a context manager, main thread only)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._note) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def agreed(self) -> int:
        """The signal some process received (0 if none), the same on every process. Collective:
        every process calls it after the same steps."""
        return dist_utils.all_ranks_max(self.received)


def requeue_if_asked(signum: int) -> None:
    """After SIGUSR1 in a SLURM job, requeues the job (call it from one process); SLURM refuses for
    a job submitted without ``--requeue``, which is then only warned about."""
    job = os.environ.get("SLURM_JOB_ID")
    if signum != signal.SIGUSR1 or job is None:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not requeue SLURM job %s (scontrol: %s); submit it again to resume", job, exc)
        return
    if result.returncode == 0:
        log.info("requeued SLURM job %s: it resumes from this checkpoint when it starts again", job)
    else:
        log.warning(
            "could not requeue SLURM job %s (%s); submit it again to resume",
            job,
            (result.stderr or result.stdout).strip() or f"scontrol exit status {result.returncode}",
        )
