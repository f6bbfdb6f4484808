"""Reading checkpoints and fitting their state dicts to models: the one
reader (safetensors or ``torch.load(weights_only=True)``) and the one key
checker, used by the SAM2 builder, the trainer and the weights cache.

Loading is exact: every parameter of the model must come from the file,
with its shape, and the file may hold nothing else; the only exception is a
list of key patterns the caller declares as new (a model variant's added
modules), and the keys that were missing because of it are reported.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import WeightsError

PathLike = Union[str, os.PathLike]
Shape = Tuple[int, ...]


def read_checkpoint(path: PathLike, *, expected: Optional[str] = None) -> Dict[str, Any]:
    """The contents of a checkpoint file (a dict): safetensors, or
    ``torch.load(weights_only=True)``, which refuses pickled objects.

    PyTorch's own text for a file that is not a plain weights checkpoint is
    written for developers and even suggests ``weights_only=False`` (running
    the file's code); it is replaced by a WeightsError naming the file, what
    was expected (``expected``) and what to do.
    """
    path = Path(path)
    what = expected or "a checkpoint of tensors (.pt/.pth/.safetensors)"
    if path.is_dir():
        raise WeightsError(f"checkpoint {path} is a folder, not a file: choose {what} inside it")
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path} (expected {what})")
    try:
        if path.suffix == ".safetensors":
            data = _read_safetensors(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals, truncated zip, wrong format
        raise WeightsError(_load_error_text(path, exc, what)) from None
    if not isinstance(data, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(data).__name__}, expected {what}")
    if PAYLOAD_CHECKSUM in data:
        stored = data.pop(PAYLOAD_CHECKSUM)
        if payload_digest(data) != stored:
            raise WeightsError(
                f"checkpoint {path} is damaged: its contents do not match the checksum written with it (the file "
                "was changed or partly overwritten after it was saved); use another checkpoint of the run "
                "(best.pt / last.pt) or train again"
            )
    return data


#: safetensors metadata key of an exported method checkpoint: its JSON holds
#: the training checkpoint's fields besides the tensors (method, config,
#: trainable_only, base_model, ...), so the file loads like the ``.pt``.
METHOD_CHECKPOINT_KEY = "surgseg_checkpoint"


def _read_safetensors(path: Path) -> Dict[str, Any]:
    """Plain tensors, or ``{"model": tensors, **fields}`` for a method
    checkpoint exported by :func:`write_method_safetensors`."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path), device="cpu")
    if METHOD_CHECKPOINT_KEY not in meta:
        return tensors
    fields = json.loads(meta[METHOD_CHECKPOINT_KEY])
    if not isinstance(fields, dict):
        raise ValueError(f"metadata {METHOD_CHECKPOINT_KEY!r} is not a JSON object")
    return {**fields, "model": tensors}


def checkpoint_fields(path: PathLike) -> Dict[str, Any]:
    """A checkpoint's fields besides its tensors (method, config, ...),
    without reading the tensors: a safetensors file's metadata, or a
    memory-mapped ``torch.load`` (the full reader's errors otherwise)."""
    import json

    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return dict(json.loads(meta[METHOD_CHECKPOINT_KEY])) if METHOD_CHECKPOINT_KEY in meta else {}
        except Exception:  # damaged: the full reader says what is wrong
            return {k: v for k, v in read_checkpoint(path).items() if k != "model"}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (or unreadable): the full reader says what is wrong
        ckpt = read_checkpoint(path)
    return {k: v for k, v in ckpt.items() if k != "model"} if isinstance(ckpt, dict) else {}


def write_method_safetensors(checkpoint: Mapping[str, Any], target: PathLike) -> Path:
    """A training checkpoint (``model`` state dict + JSON-able fields such as
    ``method``, ``config``, ``trainable_only``, ``base_model``) as one
    safetensors file, written atomically; optimizer state and history are
    left out (weights to share, not a run to resume)."""
    keep = ("method", "config", "trainable_only", "base_model", "variant", "metrics")
    fields = {k: checkpoint[k] for k in keep if k in checkpoint}
    return write_safetensors(checkpoint["model"], target, METHOD_CHECKPOINT_KEY, fields)


def write_safetensors(state: Mapping[str, torch.Tensor], target: PathLike, key: str,
                      fields: Mapping[str, Any]) -> Path:
    """Tensors as safetensors (atomic) with ``fields`` as JSON under one
    metadata ``key``: safetensors writes a metadata dict in hash order, so
    several keys would change the file's bytes (and a registered SHA-256)
    from one export of the same weights to the next."""
    import json

    from safetensors.torch import save_file

    from ..atomic import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={key: json.dumps(dict(fields), sort_keys=True, default=str)})
    return target


# Our checkpoints carry a digest of their contents: torch's zip reader does not
# check its CRCs, so bytes overwritten inside a tensor would load silently.
PAYLOAD_CHECKSUM = "payload_sha256"


def payload_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's contents (keys, tensors' dtype, shape and
    bytes, plain values), independent of how torch laid out the file."""
    import hashlib

    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(f"D{len(value)}".encode())
            for k in sorted(value, key=str):
                h.update(f"K{k!r}".encode())
                feed(value[k])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}".encode())
            for v in value:
                feed(v)
        else:
            h.update(f"V{value!r}".encode())

    feed(obj)
    return h.hexdigest()


def _load_error_text(path: Path, exc: BaseException, what: str) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"cannot read checkpoint {path}: it stores Python objects ({unsafe.group(1)}), not only tensors, "
                f"and surgseg never runs code from a checkpoint; expected {what}. If the file is yours, load it in "
                "Python and save the weights alone with torch.save(model.state_dict(), 'weights.pt')")
    if isinstance(exc, OSError) and not isinstance(exc, EOFError):
        reason = f"the file cannot be read ({exc.strerror or exc})"
    elif "zip" in text.lower() or isinstance(exc, EOFError) or "header" in text.lower():
        reason = "a damaged or incomplete checkpoint (was it copied or downloaded completely? re-download or re-import it)"
    else:  # PyTorch's own text is for developers (and suggests running the file's code): never shown
        reason = "not a PyTorch checkpoint"
    return f"cannot read checkpoint {path}: {reason}; expected {what}"


def state_dict_of(ckpt: Mapping[str, Any], source: Any = "checkpoint") -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: under ``"model"`` (SAM2's and our
    trainer's format) or the dict itself; a DDP ``module.`` prefix is removed."""
    state = ckpt["model"] if isinstance(ckpt.get("model"), Mapping) else ckpt
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(map(str, list(ckpt)[:8]))
        raise WeightsError(
            f"checkpoint {source} holds no state dict of tensors (expected a dict of tensors or one under 'model'; "
            f"keys: {keys})"
        )
    state = dict(state)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """``state_dict_of(read_checkpoint(path))``."""
    return state_dict_of(read_checkpoint(path), path)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    # a pattern is a glob ("sam_mask_decoder.fusion.*") or a module prefix ("sam_mask_decoder.fusion")
    return any(fnmatch.fnmatchcase(key, p) or key.startswith(p.rstrip(".") + ".") or key == p for p in patterns)


def _first(items: List[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def check_state_keys(
    state: Mapping[str, Any],
    expected: Mapping[str, Shape],
    *,
    missing_ok: Sequence[str] = (),
    target: str = "this model",
    source: Any = "checkpoint",
) -> List[str]:
    """Compare a state dict with a model's parameter names and shapes.

    Returns the keys the model has and the file lacks that ``missing_ok``
    (globs or module prefixes) allows: the new parameters. Any other missing
    key, any key the model does not have and any shape mismatch raises
    WeightsError naming ``target``, ``source`` and the first keys."""
    missing = [k for k in expected if k not in state]
    new = [k for k in missing if _matches(k, missing_ok)]
    missing = [k for k in missing if k not in set(new)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    parts = []
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} with wrong shape (shape mismatch; first: {'; '.join(wrong_shape[:3])})")
    if missing:
        parts.append(f"{len(missing)} missing (first: {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {_first(unexpected)})")
    if parts:
        raise WeightsError(f"weights in {source} do not fit {target}: " + "; ".join(parts))
    return new


@dataclass
class LoadReport:
    """What ``load_state_into`` did: the model's parameters that the file
    did not hold (allowed as new, left at their initialisation)."""

    source: str
    new_keys: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.new_keys:
            return f"all weights from {self.source}"
        return f"weights from {self.source}; {len(self.new_keys)} new parameter(s) initialised: {_first(self.new_keys, 5)}"


def load_state_into(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    missing_ok: Sequence[str] = (),
    target: str = "this model",
    source: Any = "checkpoint",
) -> LoadReport:
    """Check (``check_state_keys``) then load ``state`` into ``model``."""
    own = model.state_dict()
    new = check_state_keys(state, {k: tuple(v.shape) for k, v in own.items()}, missing_ok=missing_ok,
                           target=target, source=source)
    result = model.load_state_dict(state, strict=not new)
    # checked above; torch agrees (it may fill some new keys itself: BatchNorm's num_batches_tracked)
    if set(result.missing_keys) - set(new) or result.unexpected_keys:
        raise WeightsError(f"loading {source} into {target} left {result.missing_keys[:3]} unset")
    return LoadReport(source=str(source), new_keys=list(new))
