"""DDP helpers: the same command runs alone or under ``torchrun``.

``torchrun --nproc_per_node N`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR; when WORLD_SIZE > 1 we join the process group (NCCL on CUDA,
gloo on CPU). Rank 0 alone writes logs and checkpoints; metrics are averaged
across ranks with ``all_reduce``.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Dict, Mapping

import torch
import torch.distributed as dist

from ..device import rank_gpu

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    #: this rank's GPU (CUDA): its local rank, or that modulo the GPUs when more processes than GPUs run
    gpu_index: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> DistInfo:
    """Rank/world size from torchrun's environment (no process group needed)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device_type: str) -> DistInfo:
    """Join torchrun's process group (nothing when run alone): NCCL on CUDA
    with a GPU per process; with more processes on a node than GPUs (e.g.
    ``--nproc_per_node 2`` on a one-GPU workstation) the ranks share the GPUs
    round-robin over gloo, since NCCL refuses two ranks on one GPU."""
    info = env_world()
    if info.world_size > 1 and dist.is_available() and not dist.is_initialized():
        backend = "gloo"
        if device_type == "cuda":
            gpus = max(1, torch.cuda.device_count())
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
            info.gpu_index = rank_gpu(info.local_rank)
            if local_world > gpus:
                if info.local_rank == 0:
                    log.warning("%d processes share %d GPU(s) on this node: gloo instead of NCCL (NCCL needs one "
                                "GPU per process), slower; start one process per GPU for speed", local_world, gpus)
            else:
                backend = "nccl"
            torch.cuda.set_device(info.gpu_index)
        dist.init_process_group(backend=backend)
        info.initialized_here = True
    return info


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        # all ranks tear the group down together: a rank that destroyed its gloo group and exited while another
        # still held the connection aborted now and then at exit ("terminate called without an active
        # exception", SIGABRT, ~1 in 4 runs of tests/test_ddp.py); bounded, so a rank that died cannot hang us
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        except RuntimeError as exc:
            log.warning("ranks did not all reach the end of training together: %s", exc)
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def reduce_weighted(sums: Mapping[str, float], count: float, info: DistInfo, device: torch.device) -> Dict[str, float]:
    """Averages ``sums[k] / count`` over all ranks (each rank's sums are
    weighted totals: metric x batch size)."""
    keys = sorted(sums)
    if not info.enabled or not dist.is_initialized():
        return {k: sums[k] / max(count, 1e-12) for k in keys}
    # gloo reduces CPU tensors, NCCL CUDA tensors.
    t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total = float(t[-1])
    return {k: float(t[i]) / max(total, 1e-12) for i, k in enumerate(keys)}


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if any rank says True (stop requests, NaN)."""
    if not info.enabled or not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
