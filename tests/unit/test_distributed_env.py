import os

import torch

from clipkit import distributed


def test_single_process_needs_no_launcher(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    env = distributed.init_distributed("cpu")
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) == (x, 0)
    assert distributed.all_ranks_agree(False, env.device) is False


def test_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed._launcher_env() == (3, 8, 1)


def test_srun_variables_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_LAUNCH_NODE_IPADDR", "10.1.2.3")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert distributed._launcher_env() == (5, 16, 1)
    assert os.environ["MASTER_ADDR"] == "10.1.2.3"
    assert os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)
