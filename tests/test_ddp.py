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
