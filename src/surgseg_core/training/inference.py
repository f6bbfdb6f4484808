"""Using a trained checkpoint: load it into its method's model, evaluate on
a dataset folder, predict on videos/folders. Shared by ``surgseg
evaluate/predict`` and the napari widgets."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..config import merge_config
from ..errors import ConfigError, DatasetError
from ..progress import CancelToken, ProgressCallback
from .checkpoint import load_checkpoint, load_model_weights
from .distributed import DistInfo, env_world
from .method import MethodSpec, get_method
from ..device import resolve_device
from ..device import resolve_precision as resolve_dtype
from .trainer import _safe_len, _validate, resolve_config

PathLike = Union[str, os.PathLike]


def load_trained_model(
    method: Union[str, MethodSpec],
    checkpoint: PathLike,
    config: Optional[Mapping[str, Any]] = None,
    device: Optional[str] = None,
) -> Tuple[MethodSpec, torch.nn.Module, Dict[str, Any], torch.device]:
    """``(spec, model in eval mode on device, config, device)``; the config
    is the checkpoint's training config with ``config`` on top."""
    spec = get_method(method) if isinstance(method, str) else method
    checkpoint, registered = resolve_checkpoint(checkpoint, spec.name)
    ckpt = load_checkpoint(checkpoint, expected=f"a {spec.name} model checkpoint from training "
                                                f"(checkpoints/best.pt of a 'surgseg train {spec.name}' run)")
    saved_by = ckpt.get("method")
    if saved_by not in (None, spec.name):
        raise ConfigError(f"checkpoint {checkpoint} was trained with method {saved_by!r}, not {spec.name!r}")
    if saved_by is None and "model" not in ckpt and registered is None:
        # plain weights (an official SAM2 file, exported safetensors): refused before the model is built,
        # which for some methods means fetching encoder weights from the internet first
        kind = "SAM2 weights" if any(str(k).startswith("image_encoder.") for k in ckpt) else "plain weights"
        raise ConfigError(f"{checkpoint} holds {kind}, not a '{spec.name}' training checkpoint (checkpoints/best.pt "
                          f"of a 'surgseg train {spec.name}' run); weights from elsewhere are used by name after "
                          f"'surgseg weights import FILE --name NAME --method {spec.name}'")
    cfg = resolve_config(spec, merge_config(config, {"device": device} if device else None),
                         base=merge_config(ckpt.get("config"), registered))
    cfg["checkpoint"] = str(checkpoint)  # provenance of everything predicted with it
    model = spec.build_model(cfg)
    load_model_weights(checkpoint, model, ckpt=ckpt)
    dev = resolve_device(cfg["device"], env_world().local_rank)
    model.to(dev).eval()
    return spec, model, cfg, dev


def resolve_checkpoint(checkpoint: PathLike, method: str) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """A checkpoint path, or weights registered under that name (then their
    method must be ``method``; their SAM2 variant goes into the config)."""
    path = Path(checkpoint)
    if path.is_file():
        return path, None
    from ..weights import get_entry, resolve_weights

    entry = get_entry(str(checkpoint))
    if entry is None:
        return path, None  # load_checkpoint names the missing file
    if entry.method != method:
        raise ConfigError(f"registered weights {entry.name!r} are for method {entry.method!r}, not {method!r}")
    return resolve_weights(entry.name), ({"variant": entry.variant} if entry.variant else None)


def evaluate_checkpoint(
    method: Union[str, MethodSpec],
    checkpoint: PathLike,
    data: PathLike,
    config: Optional[Mapping[str, Any]] = None,
    *,
    device: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Dict[str, float]:
    """Metrics of ``checkpoint`` on the dataset folder ``data`` (the
    method's ``evaluate``, or its ``metrics`` averaged over the folder)."""
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"evaluation data not found: {data}")
    spec, model, cfg, dev = load_trained_model(method, checkpoint, config, device)
    if spec.evaluate is not None:
        return dict(spec.evaluate(model, data, cfg, progress=progress, cancel=cancel))
    cfg = {**cfg, "data_root": str(data), "val_root": str(data)}
    train_ds, val_ds = spec.build_datasets(cfg)
    ds = val_ds if val_ds is not None else train_ds
    if ds is None or _safe_len(ds, "evaluation") == 0:
        raise DatasetError(f"evaluation dataset {data} is empty")
    dtype = resolve_dtype(cfg["precision"], dev)
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    metrics = _validate(spec, model, ds, cfg, dev, autocast, DistInfo(), spec.collate_fn)
    return {k[4:] if k.startswith("val_") else k: v for k, v in metrics.items()}


def predict_with_checkpoint(
    method: Union[str, MethodSpec],
    checkpoint: PathLike,
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    config: Optional[Mapping[str, Any]] = None,
    *,
    device: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> List[Path]:
    """Run the method's ``predict`` on videos/folders; under ``torchrun``
    each rank takes every WORLD_SIZE-th input (no process group needed)."""
    spec = get_method(method) if isinstance(method, str) else method
    if spec.predict is None:
        raise ConfigError(f"method {spec.name!r} has no predict function")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise DatasetError(f"input(s) not found: {', '.join(missing)}")
    world = env_world()
    mine = [Path(p) for i, p in enumerate(inputs) if i % world.world_size == world.rank]
    if not mine:
        return []
    spec, model, cfg, _ = load_trained_model(spec, checkpoint, config, device)
    with torch.no_grad():
        written = spec.predict(model, mine, Path(out_dir), cfg, progress=progress, cancel=cancel)
    written = [Path(p) for p in (written or [])]
    _add_missing_provenance(spec.name, cfg, mine, written)
    return written


def _add_missing_provenance(method: str, cfg: Mapping[str, Any], inputs: Sequence[Path], written: Sequence[Path]):
    """Provenance for each written file whose method did not record its own
    (:func:`~surgseg_core.provenance.attach`: a PNG text chunk, else a
    ``.provenance.json`` sidecar): the input it was named after and its
    hash, the checkpoint and its hash, the settings."""
    from ..provenance import attach, build_provenance, checkpoint_identity, read_provenance

    identity = checkpoint_identity(method, cfg.get("checkpoint"), cfg.get("variant"))
    options = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool))}
    for path in written:
        try:
            if read_provenance(path):
                continue
        except (OSError, ValueError):
            pass
        named = [p for p in inputs if path.name.startswith(p.stem if p.is_file() else p.name)]
        source = named[0] if len(named) == 1 else (inputs[0] if len(inputs) == 1 else None)
        attach(path, build_provenance(result=f"prediction:{method}", source=source, model=identity, options=options))
