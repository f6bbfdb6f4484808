"""Device and precision choice: CUDA > MPS > CPU, bf16 autocast and TF32 on
CUDA, plain float32 elsewhere; the same code runs everywhere."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Union

import torch

from ..errors import ConfigError


def pick_device(prefer: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``prefer`` (e.g. "cpu", "cuda:1") if given, else the best available."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {prefer!r} requested but CUDA is not available on this machine")
        if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device {prefer!r} requested but Apple MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def enable_fast_math(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs (what SAM2's own demos enable)."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: Optional[bool] = None) -> ContextManager:
    """bf16 autocast on CUDA (default on), nothing elsewhere: CPU bf16 is slow
    on most CPUs and MPS autocast is incomplete."""
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
