"""The preemption watch notes the stop signals while installed and restores the handlers after."""

import os
import signal

import pytest

from clipkit.lifetime import STOP_SIGNALS
from clipkit.train.preemption import PreemptionWatch, requeue_if_asked


def test_the_first_signal_is_noted_and_agreed_on_alone():
    with PreemptionWatch() as watch:
        assert watch.agreed() == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.agreed() == signal.SIGUSR1


def test_a_second_sigint_stops_at_once():
    with PreemptionWatch() as watch:
        os.kill(os.getpid(), signal.SIGINT)
        assert watch.agreed() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_previous_handlers_come_back():
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    with PreemptionWatch():
        assert all(signal.getsignal(signum) != before[signum] for signum in STOP_SIGNALS)
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_requeue_is_only_asked_after_sigusr1_in_a_slurm_job_and_never_fails(monkeypatch, caplog):
    calls = []

    def no_scontrol(command, **kwargs):
        calls.append(command)
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr("subprocess.run", no_scontrol)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    requeue_if_asked(signal.SIGUSR1)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    requeue_if_asked(signal.SIGTERM)
    assert not calls
    requeue_if_asked(signal.SIGUSR1)  # no scontrol here: a warning, not a traceback
    assert calls and "could not requeue SLURM job 42" in caplog.text
