"""DDP on CPU: the same ``surgseg train`` command under torchrun with 2
processes (gloo); data is sharded, metrics reduced, only rank 0 writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from surgseg_core.training.checkpoint import load_checkpoint
from surgseg_core.training.run_log import read_metrics

TESTS = Path(__file__).resolve().parent


def test_torchrun_two_processes_gloo(tmp_path):
    torch_dist = pytest.importorskip("torch.distributed")
    if not torch_dist.is_available():
        pytest.skip("torch.distributed not available")
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "surgseg_core", "train", "_toy_method:toy", "--run-dir", str(run), "--device", "cpu",
           "--set", "epochs=2", "--set", "n_train=16", "--set", "batch_size=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 logs: one line per epoch, not one per process.
    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    assert proc.stdout.count("best checkpoint:") == 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["world_size"] == 2
    # 16 samples split over 2 ranks, batch 4: 2 optimizer steps per epoch (4 alone).
    assert ckpt["step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert 0.0 <= records[-1]["val_acc"] <= 1.0


@pytest.mark.parametrize("gpus, rank, backend, gpu", [(1, 0, "gloo", 0), (1, 1, "gloo", 0), (2, 1, "nccl", 1),
                                                      (3, 2, "nccl", 2)])
def test_more_processes_than_gpus_share_them_over_gloo(monkeypatch, gpus, rank, backend, gpu):
    """torchrun --nproc_per_node 2 on a one-GPU workstation: NCCL refuses two
    ranks on one GPU, so the ranks share it over gloo (rank 1 on cuda:0, not
    the missing cuda:1); with a GPU per process, NCCL on the rank's own GPU.
    (The process group itself is recorded, not started: no GPU here.)"""
    import torch
    import torch.distributed as dist

    from surgseg_core.device import resolve_device
    from surgseg_core.training import distributed

    world = {"WORLD_SIZE": "2" if gpus < 3 else "3", "RANK": str(rank), "LOCAL_RANK": str(rank)}
    world["LOCAL_WORLD_SIZE"] = world["WORLD_SIZE"]
    for key, value in world.items():
        monkeypatch.setenv(key, value)
    started, chosen = [], []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: started.append(backend))
    info = distributed.init_distributed("cuda")
    assert started == [backend] and chosen == [gpu] and info.gpu_index == gpu and info.initialized_here
    # the device resolver agrees (inference under torchrun, trainer's "cuda")
    assert resolve_device("cuda", local_rank=rank) == torch.device("cuda", gpu)
    assert resolve_device("auto", local_rank=rank) == torch.device("cuda", gpu)
