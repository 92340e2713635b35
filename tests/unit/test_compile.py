"""trainer.compile: the compiled towers compute the same loss and gradients as the eager ones."""

import json
import math

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.models.build import build_bundle
from clipkit.objectives.objective import Objective
from clipkit.train.compile import compile_towers
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.run import train
from clipkit.train.step import forward_backward
from tests.conftest import TINY_MODEL, demo_overrides


def loss_and_grads(device: torch.device, compiled: bool, precision: str = "fp32"):
    checked = check_config(
        compose_config(["experiment=demo_image_text", "eval=none", *TINY_MODEL, f"trainer.precision={precision}"])
    )
    torch.manual_seed(0)
    model = build_bundle(checked, device).model
    if compiled:
        compile_towers(model)
    generator = torch.Generator().manual_seed(1)
    rows = 8
    inputs = {
        "image": torch.randn(rows, 3, 32, 32, generator=generator).to(device),
        "text": torch.randint(1, 1000, (rows, 16), generator=generator).to(device),
    }
    present = {m: torch.ones(rows, dtype=torch.bool, device=device) for m in inputs}
    losses = forward_backward(
        model,
        Objective(checked.cfg.loss),
        [inputs],
        [present],
        autocast_factory(precision, device),
        grad_scaler(precision, device),
    )
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return losses["total"].item(), grads, model


def assert_same_step(device: torch.device, precision: str, tolerance: float) -> None:
    eager_loss, eager, _ = loss_and_grads(device, compiled=False, precision=precision)
    compiled_loss, compiled, model = loss_and_grads(device, compiled=True, precision=precision)
    assert all(tower.encoder._compiled_call_impl is not None for tower in model.towers.values())
    assert "towers.image.encoder.proj" in dict(model.named_parameters())  # names unchanged
    assert compiled_loss == pytest.approx(eager_loss, rel=tolerance)
    assert compiled.keys() == eager.keys()
    for name, grad in eager.items():
        scale = grad.abs().max().item() + 1e-6
        assert (compiled[name] - grad).abs().max().item() <= tolerance * scale, name


@pytest.mark.slow
def test_compiled_towers_give_the_eager_step_on_cpu():
    assert_same_step(torch.device("cpu"), "fp32", 1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("bf16", 5e-2)])
def test_compiled_towers_give_the_eager_step_on_cuda(precision, tolerance):
    assert_same_step(torch.device("cuda"), precision, tolerance)


@pytest.mark.slow
def test_compiled_trimodal_demo_trains_in_bf16(small_demo, tmp_path):
    """All three towers compiled under bf16 autocast, with rows lacking modalities: every loss
    finite (compiling the audio front end into the backbone's graph gave NaN from the 2nd step)."""
    train(
        compose_config(
            [
                *demo_overrides(small_demo),
                "trainer.max_steps=3",
                "trainer.log_every_n_steps=1",
                "eval=none",
                "data.workers=0",
                "trainer.compile=true",
                "trainer.precision=bf16",
            ]
        ),
        tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert all(math.isfinite(v) for k, v in record.items() if k.startswith("loss/")), record
