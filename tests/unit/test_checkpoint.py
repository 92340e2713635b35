import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from clipkit.distributed import DistEnv
from clipkit.errors import CheckpointError
from clipkit.train import checkpoint as ckpt
from clipkit.train.checkpoint_manager import CheckpointManager, CheckpointPolicy
from clipkit.train.sharded import read_consolidated_model, read_shards, write_shards
from clipkit.train.state import TrainProgress


def trained(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def manager(root, model, optimizer, progress=None, keep=3, resume="auto", asynchronous=False, keep_every=0):
    return CheckpointManager(
        root,
        CheckpointPolicy(1, keep, resume, "full", asynchronous, keep_every),
        model,
        optimizer,
        shared={"progress": progress or TrainProgress()},
        per_process={},
        config_yaml="a: 1\n",
        env=DistEnv(),
    )


def test_layout_manifest_latest_and_keep_last_k(tmp_path):
    model, optimizer = trained()
    saver = manager(tmp_path, model, optimizer, keep=2)
    for step in (10, 20, 30, 40):
        saver.save(step)
    assert (tmp_path / "latest").read_text().strip() == "step_0000040"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_0000030", "step_0000040"]
    manifest = json.loads((tmp_path / "step_0000040" / ckpt.MANIFEST_FILE).read_text())
    assert (manifest["layout"], manifest["world_size"], manifest["step"]) == ("full", 1, 40)
    assert sorted(manifest["files"]) == sorted([ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.CONFIG_FILE])
    assert all(len(entry["sha256"]) == 64 and entry["bytes"] > 0 for entry in manifest["files"].values())


def test_keep_every_n_steps_keeps_its_multiples_beyond_the_last_k(tmp_path):
    model, optimizer = trained()
    saver = manager(tmp_path, model, optimizer, keep=2, keep_every=30)
    for step in range(10, 110, 10):
        saver.save(step)
    kept = ["step_0000030", "step_0000060", "step_0000090", "step_0000100"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == kept
    assert ckpt.find_latest(tmp_path).name == "step_0000100"


def test_half_written_checkpoints_are_never_picked(tmp_path):
    model, optimizer = trained()
    manager(tmp_path, model, optimizer).save(10)
    ckpt.staging_dir(tmp_path, 20).mkdir()  # a staging folder left by a killed run
    partial = tmp_path / "step_0000030"
    partial.mkdir()
    (partial / ckpt.MODEL_FILE).write_bytes(b"")
    assert ckpt.find_latest(tmp_path).name == "step_0000010"
    (tmp_path / "latest").write_text("step_0000030\n")  # a pointer to an incomplete folder
    assert ckpt.find_latest(tmp_path).name == "step_0000010"
    (tmp_path / "latest").write_bytes(b"\xff\xfe\x00garbage")  # a pointer that is not text
    assert ckpt.find_latest(tmp_path).name == "step_0000010"
    manager(tmp_path, model, optimizer)
    assert not ckpt.staging_dir(tmp_path, 20).exists()  # a new run clears what a killed one left


def test_resume_restores_weights_optimizer_and_progress(tmp_path):
    model, optimizer = trained()
    manager(tmp_path, model, optimizer, TrainProgress(7, 70)).save(7)
    fresh_model, _ = trained(seed=1)
    fresh_model.zero_grad(set_to_none=True)  # as when a run resumes
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.1)
    progress = TrainProgress()
    assert manager(tmp_path, fresh_model, fresh, progress).resume() == tmp_path / "step_0000007"
    assert progress == TrainProgress(7, 70)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))
    for before, after in zip(optimizer.state.values(), fresh.state.values()):
        assert torch.equal(before["exp_avg_sq"], after["exp_avg_sq"])


def test_a_damaged_newest_checkpoint_is_passed_over_on_resume(tmp_path, caplog):
    model, optimizer = trained()
    saver = manager(tmp_path, model, optimizer)
    saver.save(1)
    saver.save(2)
    damaged = tmp_path / "step_0000002" / ckpt.MODEL_FILE
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # same size, other contents: only the checksum tells
    damaged.write_bytes(bytes(data))
    assert ckpt.find_latest(tmp_path).name == "step_0000002"
    with caplog.at_level(logging.WARNING):
        assert manager(tmp_path, model, optimizer).resume().name == "step_0000001"
    assert "SHA-256 differs" in caplog.text
    with pytest.raises(CheckpointError, match="is damaged"):
        manager(tmp_path, model, optimizer, resume=str(tmp_path / "step_0000002")).resume()


def test_weights_mismatch_and_unreadable_files_are_clear_errors(tmp_path):
    model, optimizer = trained()
    manager(tmp_path, model, optimizer).save(1)
    folder = tmp_path / "step_0000001"
    other = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    ckpt.load_model_weights(other, folder)
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(CheckpointError, match="does not fit the configured model: weight is missing"):
        ckpt.load_model_weights(nn.Linear(4, 2), folder)
    wider = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    with pytest.raises(CheckpointError, match=r"1.weight has shape \(2, 3\) in the checkpoint, \(5, 3\) in the model"):
        ckpt.load_model_weights(wider, folder)
    (folder / ckpt.MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged"):
        ckpt.resolve_checkpoint(str(folder))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        ckpt.load_model_weights(other, folder)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt.resolve_checkpoint(str(tmp_path / "nope"))


def test_a_checkpoint_from_before_manifests_still_resumes(tmp_path):
    """Written as clipkit did before the checkpoint manager: no manifest, optimizer by position."""
    model, optimizer = trained()
    folder = tmp_path / "step_0000005"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / ckpt.MODEL_FILE))
    torch.save(
        {
            "step": 5,
            "samples_seen": 50,
            "optimizer": optimizer.state_dict(),
            "scheduler": {},
            "scaler": {},
            "data": {"epoch": 0, "workers": 0, "skipped": 0, "ranks": [{"rng": {}, "taken": {}}]},
        },
        folder / ckpt.STATE_FILE,
    )
    (folder / ckpt.CONFIG_FILE).write_text("a: 1\n")
    fresh_model, _ = trained(seed=1)
    fresh_model.zero_grad(set_to_none=True)
    progress = TrainProgress()
    resumed = manager(tmp_path, fresh_model, torch.optim.AdamW(fresh_model.parameters(), lr=0.1), progress).resume()
    assert resumed == folder and progress == TrainProgress(5, 50) and ckpt.checkpoint_step(folder) == 5
    assert torch.equal(fresh_model[1].bias, model[1].bias)


def test_an_asynchronous_save_holds_the_weights_of_its_step(tmp_path):
    model, optimizer = trained()
    at_save = {k: v.clone() for k, v in model.state_dict().items()}
    saver = manager(tmp_path, model, optimizer, asynchronous=True)
    saver.save(3)
    with torch.no_grad():  # training goes on while the checkpoint is written
        for p in model.parameters():
            p.add_(1.0)
    saver.close()
    saved = ckpt.read_model_state(tmp_path / "step_0000003")
    assert all(torch.equal(saved[k], v) for k, v in at_save.items())


def test_sharded_state_round_trips_and_consolidates_in_one_process(tmp_path):
    """The DCP layout without a process group; several processes: tests/integration."""
    model, optimizer = trained()
    write_shards(model, optimizer, tmp_path / "shards")
    assert torch.equal(read_consolidated_model(tmp_path / "shards")["1.weight"], model[1].weight)
    fresh_model, _ = trained(seed=1)
    fresh_model.zero_grad(set_to_none=True)
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.1)
    read_shards(fresh_model, fresh, tmp_path / "shards")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))
    for before, after in zip(optimizer.state.values(), fresh.state.values()):
        assert torch.equal(before["exp_avg"], after["exp_avg"])


def test_optimizer_state_by_name_and_the_older_by_position_both_load():
    from clipkit.train.parallel import full_state, load_full_optimizer_state

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
