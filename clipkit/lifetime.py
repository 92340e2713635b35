"""How clipkit's processes end: the signals that ask a run to stop early, and dying with the parent.

SIGTERM (schedulers, ``scancel``), SIGUSR1 (``sbatch --signal``) and SIGINT (Ctrl-C) ask a run to
stop at the next step with a checkpoint; the trainer's processes handle them
(:mod:`clipkit.train.preemption`). Their data-loader workers ignore them and die with their
process, as the processes torchrun starts die with torchrun: never an orphan that goes on running.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_PR_SET_PDEATHSIG = 1
_workers_end_at_exit = False


def die_with_parent() -> bool:
    """Has the kernel SIGKILL this process when its parent dies, even by SIGKILL (Linux; False
    elsewhere or if refused). A parent already gone ends this process now."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if parent == 1 or os.getppid() != parent:
        os._exit(1)
    return True


def die_with_torchrun() -> None:
    """For a process torchrun started: ends with the torchrun agent rather than training on into
    a run nobody watches. Not for a process started otherwise (``nohup clipkit-train &`` outlives
    its shell on purpose)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()


def data_worker_init(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``. SLURM and a terminal signal every process of the job, and
    PyTorch's workers die on SIGTERM (SIGUSR1 by default too): the main process, still saving its
    checkpoint, would then fail on the dead worker. It shuts them down itself when it stops; a
    worker whose process died goes with it (PyTorch's own check takes up to 5 s)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent()


def end_workers_at_exit() -> None:
    """At interpreter exit, kill the daemonic children still running (data workers whose loader was
    never closed, e.g. a generator left unfinished). multiprocessing's own exit handler ends them
    with SIGTERM, which they ignore (see data_worker_init), and then waits for them forever;
    handlers registered later run first, so this one runs before it."""
    global _workers_end_at_exit
    if not _workers_end_at_exit:
        atexit.register(_kill_daemonic_children)
        _workers_end_at_exit = True


def _kill_daemonic_children() -> None:
    # A live DataLoader iterator's SIGCHLD handler would report these deliberate kills as a worker
    # failure: a traceback at the end of a run that went well.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
