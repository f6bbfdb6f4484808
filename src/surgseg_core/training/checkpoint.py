"""Training checkpoints: written atomically, loadable with ``weights_only=True``.

A checkpoint is a dict with the keys ``model``, ``optimizer``, ``scheduler``,
``epoch``, ``step``, ``rng``, ``config``, ``method``, ``metrics``,
``surgseg_version`` (plus ``trainer``: the loop's own bookkeeping). RNG
states are stored as tensors and plain lists because ``weights_only`` loading
refuses numpy arrays and arbitrary objects.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import WeightsError

PathLike = Union[str, os.PathLike]

CHECKPOINT_KEYS = (
    "model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "method", "metrics", "surgseg_version",
)


def capture_rng_state() -> Dict[str, Any]:
    """torch / CUDA / numpy / python RNG states in ``weights_only``-safe types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "internal": [int(v) for v in py_state[1]],
            "gauss_next": py_state[2],
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["internal"]), s["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # different GPU count than when saved: keep the fresh state
            pass


def save_checkpoint(path: PathLike, checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` atomically (temp file + rename): a crash or
    ``kill -9`` mid-write leaves the previous file intact."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return path


def read_torch_file(path: PathLike, *, map_location: Any = "cpu", expected: Optional[str] = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on.

    PyTorch's own text for a file that is not a plain weights checkpoint is
    written for developers and even suggests ``weights_only=False`` (running
    the file's code); it is replaced by a WeightsError naming the file, what
    was expected (``expected``) and what to do.
    """
    path = Path(path)
    what = expected or "a PyTorch checkpoint (.pt/.pth) of tensors"
    if path.is_dir():
        raise WeightsError(f"checkpoint {path} is a folder, not a file: choose {what} inside it")
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path} (expected {what})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, wrong format
        raise WeightsError(_load_error_text(path, exc, what)) from None


def _load_error_text(path: Path, exc: BaseException, what: str) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"cannot read checkpoint {path}: it stores Python objects ({unsafe.group(1)}), not only tensors, "
                f"and surgseg never runs code from a checkpoint; expected {what}. If the file is yours, load it in "
                "Python and save the weights alone with torch.save(model.state_dict(), 'weights.pt')")
    if isinstance(exc, OSError) and not isinstance(exc, EOFError):
        reason = f"the file cannot be read ({exc.strerror or exc})"
    elif "zip" in text.lower() or isinstance(exc, EOFError):
        reason = "a damaged or incomplete checkpoint (was it copied or downloaded completely?)"
    else:  # PyTorch's own text is for developers (and suggests running the file's code): never shown
        reason = "not a PyTorch checkpoint"
    return f"cannot read checkpoint {path}: {reason}; expected {what}"


def load_checkpoint(path: PathLike, map_location: Any = "cpu", *, expected: Optional[str] = None) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear WeightsError on a
    bad file (``expected`` says what the file should have been)."""
    path = Path(path)
    ckpt = read_torch_file(path, map_location=map_location, expected=expected)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def _state_dict_from(ckpt: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    if "model" in ckpt and isinstance(ckpt["model"], Mapping):
        return ckpt["model"]
    # Plain state dicts (torch.save(model.state_dict())) are accepted too.
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise WeightsError(f"checkpoint {path} has no 'model' state dict (keys: {', '.join(map(str, list(ckpt)[:8]))})")


def load_model_weights(
    path: PathLike, model: torch.nn.Module, *, strict: bool = True, ckpt: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Load ``ckpt["model"]`` (or a plain state dict) into ``model``.

    ``ckpt``: the already loaded contents of ``path`` (saves reading a large
    checkpoint twice). Raises WeightsError naming missing/unexpected keys and
    shape mismatches. Returns the checkpoint dict (for its config/metrics).
    """
    path = Path(path)
    if ckpt is None:
        ckpt = load_checkpoint(path)
    state = dict(_state_dict_from(ckpt, path))
    # Weights saved from a DDP-wrapped model carry a "module." prefix.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    bad_shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if bad_shapes:
        problems.append("shape mismatch: " + "; ".join(bad_shapes[:5]) + (" ..." if len(bad_shapes) > 5 else ""))
    if strict and missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
    if problems:
        method = ckpt.get("method")
        hint = f" (checkpoint was saved by method {method!r})" if method else ""
        raise WeightsError(f"weights in {path} do not fit this model{hint}: " + "; ".join(problems))
    if not strict:
        state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=strict)
    return ckpt
