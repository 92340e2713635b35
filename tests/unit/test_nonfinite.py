import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from clipkit.train.nonfinite import DivergenceError, NonfiniteGuard, gradient_norm


@pytest.mark.parametrize("name", ["adamw", "timm/lion"])
def test_a_step_with_non_finite_gradients_changes_nothing_and_is_counted(name):
    """The fused AdamW skips on the device; a timm optimizer's step is not called."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    if name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    else:
        optimizer = create_optimizer_v2(model.parameters(), opt=name.removeprefix("timm/"), lr=0.1)
    guard = NonfiniteGuard(optimizer, torch.amp.GradScaler("cpu", enabled=False), max_in_a_row=2)
    assert guard.on_device == (name == "adamw")

    def step(poison: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(torch.randn(5, 4)).sum()
        (loss * float("nan") if poison else loss).backward()
        if guard.before_step(gradient_norm(model.parameters(), clip=1.0)):
            optimizer.step()

    step(poison=False)
    weights = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    step(poison=True)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))  # the update was skipped
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters()))
    if name == "adamw":
        assert all(int(optimizer.state[p]["step"]) == 1 for p in model.parameters())
    assert guard.read() == 1
    guard.stop_if_diverged(step=2)  # one in a row: goes on
    step(poison=False)  # a finite step updates again and ends the run of bad ones
    assert not torch.equal(weights[0], model.weight) and guard.read() == 0
    step(poison=True)
    step(poison=True)
    assert guard.read() == 2
    with pytest.raises(DivergenceError, match="not finite in the last 2 steps"):
        guard.stop_if_diverged(step=5)
