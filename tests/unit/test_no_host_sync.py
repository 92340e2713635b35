"""A training step that is not logged never reads a device value on the host.

On a GPU such a read (``.item()``, ``int()``, ``float()``, ``bool()`` of a tensor) waits until the
device has finished all the work queued so far, which leaves it idle while the host prepares the
next step. On the CPU every tensor is a host tensor, so these tests make every such read raise in
the training process (data workers, separate processes, decode as they like) for the steps between
logging steps: a new read in the model, the objectives or the step fails here.
"""

import os

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.train.prepare import prepare
from clipkit.train.trainer import Trainer
from tests.conftest import demo_overrides

READS = ("item", "__int__", "__float__", "__bool__", "__index__")


class HostRead(AssertionError):
    pass


def forbid_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer_pid = os.getpid()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original):
            if os.getpid() == trainer_pid:
                raise HostRead(f"Tensor.{_name} in a training step that is not logged")
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def unlogged_steps_read_nothing(small_demo, tmp_path, monkeypatch, *overrides: str) -> None:
    checked, sources = prepare(
        compose_config(
            [*demo_overrides(small_demo), "trainer.max_steps=6", "trainer.log_every_n_steps=6", "eval=none", *overrides]
        )
    )
    trainer = Trainer(checked, sources, tmp_path)
    take_step = trainer._train_step
    checked_steps = []

    def step(data, window):
        if trainer.progress.step == 0:  # the first starts the data workers, before any patch
            return take_step(data, window)
        with monkeypatch.context() as patch:
            forbid_host_reads(patch)
            losses = take_step(data, window)
        checked_steps.append(trainer.progress.step + 1)
        return losses

    trainer._train_step = step
    trainer.fit()
    assert checked_steps == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("loss", ["clip", "siglip", "clip_unif_align_xunif"])
def test_trimodal_steps_read_nothing_on_the_host(small_demo, tmp_path, monkeypatch, loss):
    # The tri-modal demo: batches mix sources, so modalities are missing from rows and whole batches.
    unlogged_steps_read_nothing(small_demo, tmp_path, monkeypatch, f"loss={loss}", "trainer.grad_clip_norm=1.0")


def test_accumulated_steps_read_nothing_on_the_host(small_demo, tmp_path, monkeypatch):
    unlogged_steps_read_nothing(small_demo, tmp_path, monkeypatch, "trainer.accum_steps=2")


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_captioning_steps_read_nothing_on_the_host(small_demo, tmp_path, monkeypatch, accum_steps):
    """CoCa: the caption head scores only the non-padding tokens, found on the host's copy."""
    unlogged_steps_read_nothing(
        small_demo, tmp_path, monkeypatch, "experiment=demo_coca", f"trainer.accum_steps={accum_steps}"
    )


def test_the_guard_catches_a_read(monkeypatch):
    with monkeypatch.context() as patch:
        forbid_host_reads(patch)
        with pytest.raises(HostRead):
            torch.ones(()).item()
        with pytest.raises(HostRead):
            bool(torch.ones(()) > 0)
    assert torch.ones(()).item() == 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", [[], ["experiment=demo_coca"]], ids=["trimodal", "coca"])
def test_unlogged_cuda_steps_never_synchronize(small_demo, tmp_path, recipe):
    """On a GPU, CUDA's own detector: any synchronising call (a read, a blocking copy, a mask
    indexed on the device) raises between logging steps."""
    checked, sources = prepare(
        compose_config(
            [
                *demo_overrides(small_demo),
                *recipe,
                "trainer.device=cuda",
                "trainer.precision=bf16",
                "trainer.max_steps=6",
                "trainer.log_every_n_steps=6",
                "eval=none",
            ]
        )
    )
    trainer = Trainer(checked, sources, tmp_path)
    take_step = trainer._train_step

    def step(data, window):
        if trainer.progress.step == 0:
            return take_step(data, window)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return take_step(data, window)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer._train_step = step
    trainer.fit()
