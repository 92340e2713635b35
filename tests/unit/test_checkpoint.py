import pytest
import torch
from torch import nn

from clipkit.errors import CheckpointError
from clipkit.train import checkpoint as ckpt


def save(root, step, model, keep=3):
    return ckpt.save_checkpoint(root, step, model.state_dict(), {"step": step}, "a: 1\n", keep)


def test_layout_latest_and_keep_last_k(tmp_path):
    model = nn.Linear(3, 2)
    for step in (10, 20, 30, 40):
        save(tmp_path, step, model, keep=2)
    assert (tmp_path / "latest").read_text().strip() == "step_0000040"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_0000030", "step_0000040"]
    for name in ckpt.REQUIRED:
        assert (tmp_path / "step_0000040" / name).is_file()


def test_half_written_checkpoints_are_never_picked(tmp_path):
    model = nn.Linear(3, 2)
    save(tmp_path, 10, model)
    (tmp_path / ".step_0000020-abc").mkdir()  # a staging folder left by a killed run
    partial = tmp_path / "step_0000030"
    partial.mkdir()
    (partial / ckpt.MODEL_FILE).write_bytes(b"")
    assert ckpt.find_latest(tmp_path).name == "step_0000010"
    (tmp_path / "latest").write_text("step_0000030\n")  # a pointer to an incomplete folder
    assert ckpt.find_latest(tmp_path).name == "step_0000010"


def test_weights_round_trip_and_mismatch_is_a_clear_error(tmp_path):
    model = nn.Linear(3, 2)
    folder = save(tmp_path, 1, model)
    other = nn.Linear(3, 2)
    ckpt.load_model_weights(other, folder)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        ckpt.load_model_weights(nn.Linear(4, 2), folder)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    folder = save(tmp_path, 1, nn.Linear(3, 2))
    (folder / ckpt.MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        ckpt.load_model_weights(nn.Linear(3, 2), folder)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt.resolve_checkpoint(str(tmp_path / "nope"))


def test_optimizer_state_by_name_and_the_older_by_position_both_load():
    from clipkit.train.parallel import full_state, load_full_optimizer_state

    def trained():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        return model, optimizer

    model, optimizer = trained()
    _, by_name = full_state(model, optimizer)
    assert set(by_name["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    for saved in (by_name, optimizer.state_dict()):
        fresh_model, _ = trained()
        fresh_model.zero_grad(set_to_none=True)  # as when a run resumes
        fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.1)
        load_full_optimizer_state(fresh_model, fresh, saved)
        for before, after in zip(optimizer.state.values(), fresh.state.values()):
            assert torch.equal(before["exp_avg_sq"], after["exp_avg_sq"])
