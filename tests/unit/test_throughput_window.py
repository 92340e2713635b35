"""ThroughputWindow: samples/s over the logged window, without the evaluation and checkpoint pauses."""

import pytest

from clipkit.train import metrics
from clipkit.train.metrics import ThroughputWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_leave_out_pauses(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    window = ThroughputWindow(started=clock())
    for _ in range(4):  # 4 steps of 0.5 s, each waiting 0.1 s for its batch
        clock.now += 0.5
        window.add_step(0.1)
    with window.pause():  # an evaluation of 30 s
        clock.now += 30.0
    assert window.rates(global_batch=64) == pytest.approx(
        {"samples_per_second": 4 * 64 / 2.0, "data_time": 0.1, "data_wait_share": 0.4 / 2.0}
    )
