"""Training checkpoints: written atomically, loadable with ``weights_only=True``.

A checkpoint is a dict with the keys ``model``, ``optimizer``, ``scheduler``,
``epoch``, ``step``, ``rng``, ``config``, ``method``, ``metrics``,
``surgseg_version`` (plus ``trainer``: the loop's own bookkeeping). RNG
states are stored as tensors and plain lists because ``weights_only`` loading
refuses numpy arrays and arbitrary objects.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import WeightsError
from ..weights.state_dict import PAYLOAD_CHECKSUM, load_state_into, payload_digest, read_checkpoint, state_dict_of

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CHECKPOINT_KEYS = (
    "model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "method", "metrics", "surgseg_version",
)
# Checkpoints of models with frozen parts may hold only the trainable
# parameters (``"trainable_only": True``) plus ``"base_model"``: the name,
# sha256 and config of the weights the frozen rest comes from (the model's
# ``surgseg_base`` attribute, set by the method's ``build_model``).


def trainable_names(model: torch.nn.Module) -> set:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def model_state_for_checkpoint(model: torch.nn.Module, trainable_only: bool) -> tuple:
    """``(state_dict, extra checkpoint keys)``. With ``trainable_only`` the
    state holds the parameters that train and the buffers of modules that
    train; a fine-tuned large model then does not rewrite its frozen encoder
    at every checkpoint."""
    state = model.state_dict()
    keep = trainable_names(model)
    if not trainable_only or len(keep) == sum(1 for _ in model.parameters()):
        return state, {}  # nothing frozen: a full checkpoint
    frozen_modules = [m for m, mod in model.named_modules()
                      if list(mod.parameters()) and not any(p.requires_grad for p in mod.parameters())]
    for name, _ in model.named_buffers():
        if not any(name.startswith(m + ".") for m in frozen_modules if m):
            keep.add(name)
    base = dict(getattr(model, "surgseg_base", None) or {})
    return {k: v for k, v in state.items() if k in keep}, {"trainable_only": True, "base_model": base}


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
    payload = dict(checkpoint)
    payload.pop(PAYLOAD_CHECKSUM, None)
    payload[PAYLOAD_CHECKSUM] = payload_digest(payload)  # checked by the shared reader on every load
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: PathLike, map_location: Any = "cpu", *, expected: Optional[str] = None) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (the shared reader: clear
    WeightsError on a bad file; ``expected`` says what the file should have
    been); tensors are moved to ``map_location``."""
    ckpt = read_checkpoint(path, expected=expected)
    if str(map_location) != "cpu":
        ckpt = _to(ckpt, map_location)
    return ckpt


def _to(obj: Any, device: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def load_model_weights(
    path: PathLike,
    model: torch.nn.Module,
    *,
    missing_ok: Sequence[str] = (),
    ckpt: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Load ``ckpt["model"]`` (or a plain state dict) into ``model``, exactly:
    missing, unexpected and wrongly shaped keys raise WeightsError naming
    them, except missing keys matching ``missing_ok`` (globs or module
    prefixes: parameters the model adds), which are logged as new.

    ``ckpt``: the already loaded contents of ``path`` (saves reading a large
    checkpoint twice). Returns the checkpoint dict (for its config/metrics).
    """
    path = Path(path)
    if ckpt is None:
        ckpt = load_checkpoint(path)
    method = ckpt.get("method")
    hint = f" (checkpoint was saved by method {method!r})" if isinstance(method, str) else ""
    partial = bool(ckpt.get("trainable_only"))
    if partial:
        # what the checkpoint lacks was frozen in its run: it comes from the
        # base model, which _check_base verifies
        _check_base(ckpt, model, path)
    report = load_state_into(model, state_dict_of(ckpt, path), missing_ok=["*"] if partial else missing_ok,
                             target=f"this model{hint}", source=path)
    if report.new_keys and not partial:
        log.warning("%s", report)
    return ckpt


def _check_base(ckpt: Mapping[str, Any], model: torch.nn.Module, path: Path) -> None:
    """A trainable-only checkpoint fits only on top of the base weights it
    was trained from: refuse another base (by sha256 when both are known)."""
    saved = dict(ckpt.get("base_model") or {})
    have = dict(getattr(model, "surgseg_base", None) or {})
    if saved.get("sha256") and have.get("sha256") and saved["sha256"] != have["sha256"]:
        raise WeightsError(
            f"{path} holds only the trained parameters of a model fine-tuned from {saved.get('name')!r} "
            f"(sha256 {saved['sha256'][:12]}...), but the model was built from {have.get('name')!r} "
            f"(sha256 {have['sha256'][:12]}...): build it from the same base weights"
        )
    if saved.get("config") and have.get("config") and saved["config"] != have["config"]:
        raise WeightsError(f"{path} was trained on SAM2 config {saved['config']!r}, not {have['config']!r}")
