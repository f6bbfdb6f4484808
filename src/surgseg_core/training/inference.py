"""Using a trained checkpoint: load it into its method's model, evaluate on
a dataset folder, predict on videos/folders. Shared by ``surgseg
evaluate/predict`` and the napari widgets."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..config import merge_config
from ..errors import Cancelled, ConfigError, DatasetError, SurgsegError
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
    overwrite: bool = False,
) -> List[Path]:
    """Run the method's ``predict`` on videos/folders; under ``torchrun``
    each rank takes every WORLD_SIZE-th input (no process group needed).
    ``out_dir`` gets a completion marker per process (:class:`PredictMarker`);
    a folder holding an earlier run's is refused unless ``overwrite``."""
    spec = get_method(method) if isinstance(method, str) else method
    if spec.predict is None:
        raise ConfigError(f"method {spec.name!r} has no predict function")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise DatasetError(f"input(s) not found: {', '.join(missing)}")
    world = env_world()
    out_dir = Path(out_dir)
    mine = [Path(p) for i, p in enumerate(inputs) if i % world.world_size == world.rank]
    marker = PredictMarker(out_dir, world, spec.name, checkpoint, mine)
    marker.check(overwrite)  # refuses an earlier run's folder before the model loads
    if mine:  # a wrong checkpoint or config fails here, before anything is written
        spec, model, cfg, _ = load_trained_model(spec, checkpoint, config, device)
    marker.claim(overwrite)
    written: List[Path] = []
    try:
        if mine:
            with torch.no_grad():
                written = [Path(p) for p in (spec.predict(model, mine, out_dir, cfg, progress=progress,
                                                          cancel=cancel) or [])]
            _add_missing_provenance(spec.name, cfg, mine, written)
    except BaseException as exc:
        marker.finish("cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed", written)
        raise
    marker.finish("completed", written)
    return written


PREDICT_MARKER = "surgseg_predict"


class PredictMarker:
    """The completion marker of ``surgseg predict`` in its output folder:
    ``surgseg_predict.json`` (one process) or ``surgseg_predict.rank<R>of<N>.json``
    (one per process under torchrun, which shares no process group here).

    Written with status "running" before anything else and rewritten last
    with "completed" (or "failed"/"cancelled") and the files of the run: a
    folder is complete when every process's marker says "completed". Each
    process looks only at its own marker and at markers of runs with another
    number of processes, so no process mistakes a sibling's files for an
    earlier run's; an earlier run's marker (any status) is refused without
    ``overwrite``. With it, the old markers go first (the folder reads as
    unfinished until this run's are written), and the files they list that
    are not newer than their marker are removed (under torchrun another
    process of the new run may already have rewritten one: it stays)."""

    def __init__(self, out_dir: Path, world: DistInfo, method: str, checkpoint: PathLike,
                 inputs: Sequence[Path]) -> None:
        self.out_dir = out_dir
        self.world = world
        self.path = out_dir / marker_name(world)
        self.info = {"method": method, "checkpoint": str(checkpoint), "inputs": [str(p) for p in inputs],
                     "rank": world.rank, "world_size": world.world_size}

    def earlier(self) -> List[Path]:
        """Markers of earlier runs this process answers for."""
        if not self.out_dir.is_dir():
            return []
        mine_shape = re.compile(rf"^{PREDICT_MARKER}\.rank\d+of{self.world.world_size}\.json$")
        found = []
        for p in self.out_dir.glob(f"{PREDICT_MARKER}*.json"):
            if not p.name.startswith(PREDICT_MARKER) or not p.is_file():
                continue
            if p.name == self.path.name or (self.world.world_size == 1 or not mine_shape.match(p.name)):
                found.append(p)
        return sorted(found)

    def check(self, overwrite: bool) -> List[Path]:
        """The earlier run's markers; refused unless ``overwrite``."""
        from ..errors import WriteError

        old = self.earlier()
        if old and not overwrite:
            states = sorted({_marker_status(p) for p in old})
            raise WriteError(f"{self.out_dir} holds an earlier prediction run ({', '.join(p.name for p in old)}: "
                             f"{', '.join(states)}): a new run would mix with its files; choose an empty folder, or "
                             "overwrite (--overwrite) to replace them")
        return old

    def claim(self, overwrite: bool) -> None:
        """Remove the earlier run's markers and their files; mark this run as running."""
        from ..atomic import atomic_write_text

        old = self.check(overwrite)
        outputs: List[Tuple[Path, float]] = []
        for p in old:
            with contextlib.suppress(OSError):
                written = p.stat().st_mtime  # an earlier run's marker is written after its files
                outputs += [(f, written) for f in _marker_outputs(p, self.out_dir)]
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        for p, before in outputs:  # files of the earlier run, strictly inside the output folder
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if p.lstat().st_mtime > before:
                    continue  # rewritten since: another process of this run (torchrun) already wrote it
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        self.started = time.time()
        atomic_write_text(self.path, json.dumps({**self.info, "status": "running", "started": self.started,
                                                 "outputs": []}, indent=1))

    def finish(self, status: str, written: Sequence[Path]) -> None:
        from ..atomic import atomic_write_text
        from .. import __version__

        outputs = []
        for p in written:
            try:
                outputs.append(Path(p).resolve().relative_to(self.out_dir.resolve()).as_posix())
            except ValueError:
                outputs.append(str(p))
        record = {**self.info, "status": status, "started": self.started, "finished": time.time(),
                  "outputs": outputs, "surgseg_version": __version__}
        if status == "completed":
            atomic_write_text(self.path, json.dumps(record, indent=1))
            return
        try:  # the error that stopped the run is what the user must see
            atomic_write_text(self.path, json.dumps(record, indent=1))
        except (OSError, SurgsegError):
            pass


def marker_name(world: DistInfo) -> str:
    if world.world_size == 1:
        return f"{PREDICT_MARKER}.json"
    return f"{PREDICT_MARKER}.rank{world.rank}of{world.world_size}.json"


def _marker_status(path: Path) -> str:
    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return "completed" if status == "completed" else f"unfinished ({status})"


def _marker_outputs(path: Path, out_dir: Path) -> List[Path]:
    try:
        listed = json.loads(path.read_text(encoding="utf-8")).get("outputs") or []
    except (OSError, ValueError, AttributeError):
        return []
    root = out_dir.resolve()
    found = []
    for rel in listed:
        if not isinstance(rel, str):
            continue
        p = out_dir / rel
        try:
            inside = p.resolve().relative_to(root)
        except (ValueError, OSError):
            continue
        if inside.parts:  # never the folder itself
            found.append(p)
    return found


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
