"""Autosave snapshots of what users correct (labels, points, shapes), so a
crash or a closed window never loses the work.

One folder per source video (``autosave_dir(source)``) holds one file per
layer plus ``manifest.json``::

    <user data dir>/napari-surgseg/autosave/<video stem>-<hash of its path>/
        manifest.json                     layer name -> kind, file, saved-at, ...
        <layer>-<hash>.labels.tif         compressed multi-page TIFF (write_labels_tiff)
        <layer>-<hash>.points.csv         frame,x,y[,feature...] (write_points_csv)
        <layer>-<hash>.shapes.json        (t, y, x) vertex lists + shape types

Every file, the manifest included, is written atomically: a failed save leaves
the previous snapshot in place. Label stacks are streamed one frame at a time
and only rewritten when their content changed (a digest kept in the manifest).
``$SURGSEG_AUTOSAVE_DIR`` replaces the root folder (tests, shared lab disks).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import DatasetError
from .label_stack import DEFAULT_MAX_RAM_MB
from .labels_io import FrameStrips, read_labels_tiff, write_labels_tiff, write_labels_tiff_frames
from .points_csv import read_points_csv, write_points_csv

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

ENV_DIR = "SURGSEG_AUTOSAVE_DIR"
MANIFEST = "manifest.json"
KINDS = {"labels": ".labels.tif", "points": ".points.csv", "shapes": ".shapes.json"}
NO_SOURCE = "no-source"

# Several layers of one video save from different worker threads; the
# manifest is read-modified-written under this lock so no entry is dropped.
_MANIFEST_LOCK = threading.Lock()
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------
# Folders and names
# --------------------------------------------------------------------------


def autosave_root() -> Path:
    """``$SURGSEG_AUTOSAVE_DIR`` or ``<user data dir>/napari-surgseg/autosave``."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-surgseg")) / "autosave"


def _short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _safe(text: str, limit: int = 40) -> str:
    return (_UNSAFE.sub("_", text).strip("._-") or "layer")[:limit]


def autosave_dir(source: Optional[PathLike] = None) -> Path:
    """Snapshot folder of one source video: its file name made safe plus a
    short hash of its absolute path (two ``clip.mp4`` in different folders
    do not share snapshots). Without a source: ``<root>/no-source``."""
    root = autosave_root()
    if source is None or str(source) in ("", "."):
        return root / NO_SOURCE
    absolute = Path(source).expanduser().absolute()
    return root / f"{_safe(absolute.name)}-{_short_hash(str(absolute))}"


def snapshot_path(folder: PathLike, name: str, kind: str) -> Path:
    """File of layer ``name``; the hash keeps names that only differ in
    unsafe characters apart."""
    _check_kind(kind)
    return Path(folder) / f"{_safe(name)}-{_short_hash(name, 6)}{KINDS[kind]}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DatasetError(f"autosave: unknown layer kind {kind!r} (expected one of {', '.join(KINDS)})")


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """Layer metadata as plain JSON (numpy -> lists/scalars, unknown -> str)."""
    if depth > 20:
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 100_000 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v, depth + 1) for v in value]
    return str(value)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {"version": 1, "layers": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read autosave manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), dict):
        raise DatasetError(f"{path}: not an autosave manifest (no 'layers' table)")
    return manifest


def _update_manifest(folder: Path, name: str, entry: dict) -> None:
    with _MANIFEST_LOCK:
        try:
            manifest = _read_manifest(folder)
        except DatasetError as exc:  # never let a damaged manifest stop saving new work
            log.warning("%s; starting a new one (snapshot files are kept)", exc)
            manifest = {"version": 1, "layers": {}}
        manifest["layers"][name] = entry
        if entry.get("source"):
            manifest["source"] = entry["source"]
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))


# --------------------------------------------------------------------------
# Labels: digest + streaming
# --------------------------------------------------------------------------


class _HashedFrames:
    """Per-frame view of a label stack for write_labels_tiff that copies each
    frame once (so a frame being painted meanwhile is written whole, either
    before or after the stroke) and records the digest of exactly what is
    written, frame by frame (``digests``)."""

    def __init__(self, labels: Any, digests: list) -> None:
        self._labels = labels
        self._digests = digests
        self.shape = tuple(int(s) for s in labels.shape)
        self.dtype = np.dtype(labels.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, t):
        frame = np.array(self._labels[t], copy=True)
        if isinstance(t, (int, np.integer)):  # whole frames only (the writer also peeks at a row)
            self._digests.append(_frame_digest(frame))
        return frame

    def __array__(self, dtype=None, copy=None):  # 2D labels: one "frame"
        frame = np.array(self._labels, copy=True)
        self._digests.append(_frame_digest(frame))
        return frame if dtype is None else frame.astype(dtype)


def _new_hasher(shape: Tuple[int, ...], dtype: np.dtype):
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{shape}|{np.dtype(dtype).str}".encode())
    return h


def _frame_digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(frame)).cast("B"), digest_size=16).digest()


def _stack_digest(shape: Tuple[int, ...], dtype: np.dtype, frame_digests) -> str:
    """A stack's digest from its frames' digests (so a save that rewrites a
    few frames knows the whole stack's digest without reading the rest)."""
    h = _new_hasher(shape, dtype)
    for d in frame_digests:
        h.update(d)
    return h.hexdigest()


def _frame_digests(labels: Any, shape: Tuple[int, ...]) -> list:
    """Each frame's digest, read one frame at a time (hashlib releases the
    GIL on large buffers, so this runs well in a thread)."""
    frames = [labels] if len(shape) != 3 else (labels[t] for t in range(shape[0]))
    return [_frame_digest(np.asarray(f)) for f in frames]


def _digests_path(path: Path) -> Path:
    """Beside a labels snapshot: its frames' digests (16 bytes each)."""
    return path.with_name(path.name + ".digests")


def _saved_digests(path: Path, previous: Mapping[str, Any], shape: Tuple[int, ...],
                   dtype: np.dtype) -> Optional[list]:
    """The frame digests of the snapshot on disk when they are those of the
    manifest's entry for it (else None: an interrupted save, another shape)."""
    try:
        raw = _digests_path(path).read_bytes()
    except OSError:
        return None
    if len(raw) != 16 * shape[0] or previous.get("file") != path.name:
        return None
    digests = [raw[i : i + 16] for i in range(0, len(raw), 16)]
    if previous.get("digest") != _stack_digest(shape, dtype, digests):
        return None
    return digests


def _write_labels(path: Path, data: Any, shape: Tuple[int, ...], prov: Mapping[str, Any],
                  old: Optional[list], changed_frames: Optional[Sequence[int]]) -> list:
    """Write the snapshot; returns the frames' digests. When the last
    snapshot is on disk with its digests, only frames that changed are
    compressed, the others' compressed strips are copied from it (a stroke
    on a 1500-frame 720p stack recompressed 1.4 GB of frames otherwise):
    with ``changed_frames`` (the frames edited since then) only those are
    even read; without, every frame is read and compared by digest.
    ``old``: the last snapshot's frame digests (:func:`_saved_digests`)."""
    dtype = np.dtype(data.dtype)
    digests: list = []
    strips = FrameStrips.open(path, shape, dtype) if old is not None else None
    if strips is None:
        write_labels_tiff(_HashedFrames(data, digests), path, provenance=prov)
        return digests
    changed = None if changed_frames is None else {int(t) for t in changed_frames}
    written = [0]

    def frames():
        try:
            for t in range(shape[0]):
                if changed is not None and t not in changed:
                    digests.append(old[t])
                    yield strips[t]
                    continue
                frame = np.array(data[t], copy=True)
                digest = _frame_digest(frame)
                digests.append(digest)
                if digest == old[t]:
                    yield strips[t]
                else:
                    written[0] += 1
                    yield frame
        finally:
            strips.close()  # before the new file replaces it (Windows cannot replace an open file)

    write_labels_tiff_frames(frames(), path, shape, dtype, provenance=prov)
    log.debug("autosave of %s: %d of %d frame(s) recompressed (%s)", path.name, written[0], shape[0],
              "all read" if changed is None else f"{len(changed)} read")
    return digests


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------


def save_layer_snapshot(
    folder: PathLike,
    name: str,
    kind: str,
    data: Any,
    *,
    metadata: Optional[Mapping[str, Any]] = None,
    features: Optional[Mapping[str, Sequence[Any]]] = None,
    shape_types: Optional[Sequence[str]] = None,
    source: Optional[PathLike] = None,
    n_frames: Optional[int] = None,
    layer_kwargs: Optional[Mapping[str, Any]] = None,
    edge_colors: Optional[Any] = None,
    skip_unchanged: bool = True,
    provenance: Optional[Mapping[str, Any]] = None,
    changed_frames: Optional[Sequence[int]] = None,
) -> Path:
    """Save one layer's data into ``folder`` (atomically) and record it in
    the folder's manifest; returns the snapshot file.

    kind "labels": ``data`` is a (T, H, W) or (H, W) integer array (or a
    lazy stack), written frame by frame; with ``skip_unchanged`` an unchanged
    stack (same digest as the last snapshot) is not rewritten, and of a
    changed one only the changed frames are compressed again (the rest is
    copied from the last snapshot when it is intact); ``changed_frames``
    (the frames edited since this layer's last snapshot, when the caller
    knows them) reads only those.
    kind "points": (N, 3) ``(t, y, x)`` or (N, 2) array plus ``features``.
    kind "shapes": list of (M, D) vertex arrays, ``shape_types`` (napari
    names: "path", "polygon", ...), optional per-shape ``edge_colors`` (RGBA).
    ``layer_kwargs`` (scale, translate, axis_labels, ...) and ``metadata``
    are kept in the manifest for restoring. The entry's ``"provenance"``
    (:func:`surgseg_core.provenance.build_provenance`: source video and its
    hash, the source frames saved, the model of ``provenance`` or of
    ``metadata["provenance"]``) goes into the label TIFF's description too.
    """
    _check_kind(kind)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = snapshot_path(folder, name, kind)
    entry: dict = {"name": name, "kind": kind, "file": path.name,
                   "source": str(source) if source is not None else None}

    if kind == "labels":
        shape = tuple(int(s) for s in getattr(data, "shape", ()))
        if len(shape) not in (2, 3) or not hasattr(data, "dtype"):
            raise DatasetError(f"autosave of {name!r}: labels must be a (T, H, W) or (H, W) array, got shape {shape}")
        previous: dict = {}
        if path.is_file():
            try:
                previous = _read_manifest(folder)["layers"].get(name, {})
            except DatasetError:
                previous = {}
        now = None  # every frame's digest, when read for the unchanged check
        if skip_unchanged and previous.get("file") == path.name:
            now = _frame_digests(data, shape)
            if previous.get("digest") == _stack_digest(shape, np.dtype(data.dtype), now):
                log.debug("autosave of %r: labels unchanged, %s kept", name, path)
                return path
        old = _saved_digests(path, previous, shape, np.dtype(data.dtype)) if len(shape) == 3 else None
        if now is not None and changed_frames is None and old is not None:
            # the frames that differ from the snapshot are known now: read only those again
            changed_frames = [t for t in range(shape[0]) if now[t] != old[t]]
        prov = _provenance(kind, source, metadata, provenance, layer_kwargs,
                           range(shape[0]) if len(shape) == 3 else None)
        digests = _write_labels(path, data, shape, prov, old, changed_frames)
        digest = _stack_digest(shape, np.dtype(data.dtype), digests)
        if len(shape) == 3:  # after the snapshot: an interrupted save leaves digests that do not match it
            atomic_write_bytes(_digests_path(path), b"".join(digests))
        entry.update(digest=digest, shape=list(shape), dtype=np.dtype(data.dtype).str,
                     n_frames=n_frames if n_frames is not None else (shape[0] if len(shape) == 3 else 1))
    elif kind == "points":
        points = np.asarray(data, dtype=float)
        prov = _provenance(kind, source, metadata, provenance, layer_kwargs,
                           points[:, 0] if points.ndim == 2 and points.shape[1] == 3 else None)
        write_points_csv(points, path, features=features)
        entry.update(count=int(len(points)), ndim=int(points.shape[1]) if points.ndim == 2 else 3,
                     n_frames=n_frames if n_frames is not None else _frames_touched([points]))
    else:
        shapes = [np.asarray(s, dtype=float) for s in data]
        types = list(shape_types) if shape_types is not None else ["path"] * len(shapes)
        if len(types) != len(shapes):
            raise DatasetError(f"autosave of {name!r}: {len(types)} shape types for {len(shapes)} shapes")
        bad = [s.shape for s in shapes if s.ndim != 2]
        if bad:
            raise DatasetError(f"autosave of {name!r}: shape vertices must be (M, D) arrays, got {bad[0]}")
        ndim = int(layer_kwargs.get("ndim")) if layer_kwargs and layer_kwargs.get("ndim") else (
            shapes[0].shape[1] if shapes else 2)
        doc = {
            "version": 1,
            "ndim": ndim,
            "shapes": [{"type": str(t), "vertices": s.tolist()} for t, s in zip(types, shapes)],
            "features": _features_json(features, len(shapes), name),
        }
        if edge_colors is not None:
            doc["edge_colors"] = np.asarray(edge_colors, dtype=float).reshape(-1, 4).tolist()
        prov = _provenance(kind, source, metadata, provenance, layer_kwargs,
                           [t for sh in shapes if sh.ndim == 2 and sh.shape[1] == 3 for t in sh[:, 0]] or None)
        doc["provenance"] = prov
        atomic_write_text(path, json.dumps(doc, default=str))
        entry.update(count=len(shapes), ndim=ndim,
                     n_frames=n_frames if n_frames is not None else _frames_touched(shapes))

    entry.update(saved_at=_now(), provenance=to_jsonable(prov), metadata=to_jsonable(dict(metadata or {})),
                 layer_kwargs=to_jsonable(dict(layer_kwargs or {})))
    _update_manifest(folder, name, entry)
    log.debug("autosaved %s %r to %s", kind, name, path)
    return path


def _provenance(kind: str, source: Optional[PathLike], metadata: Optional[Mapping[str, Any]],
                base: Optional[Mapping[str, Any]], layer_kwargs: Optional[Mapping[str, Any]],
                layer_frames: Optional[Any]) -> dict:
    """The snapshot's record: layer frame i is source frame start + i * step
    (the layer's placement on its video: translate / scale along t)."""
    from ..provenance import build_provenance

    if base is None:
        base = (metadata or {}).get("provenance") or {}
    scale = list((layer_kwargs or {}).get("scale") or [])
    translate = list((layer_kwargs or {}).get("translate") or [])
    start = float(translate[0]) if len(translate) == 3 else 0.0
    step = float(scale[0]) if len(scale) == 3 else 1.0
    frames = None if layer_frames is None else [start + float(t) * step for t in layer_frames]
    return build_provenance(base=base, result=f"autosave:{kind}", source=source, frames=frames,
                            frame_map={"start": start, "step": step}, layer_kind=kind)


def _frames_touched(arrays: Sequence[np.ndarray]) -> Optional[int]:
    """Highest frame index + 1 of (t, y, x) coordinates; None for 2D data."""
    frames = [a[:, 0] for a in arrays if a.ndim == 2 and a.shape[1] == 3 and len(a)]
    if not frames:
        return None
    return int(np.max(np.concatenate(frames))) + 1


def _features_json(features: Optional[Mapping[str, Sequence[Any]]], n: int, name: str) -> dict:
    out: dict = {}
    for col in features if features is not None else ():
        values = list(features[col])
        if len(values) != n:
            raise DatasetError(f"autosave of {name!r}: feature '{col}' has {len(values)} values for {n} shapes")
        out[str(col)] = to_jsonable(values)
    return out


# --------------------------------------------------------------------------
# List and load
# --------------------------------------------------------------------------


def list_snapshots(folder: PathLike) -> list[dict]:
    """Manifest entries of ``folder`` whose file exists, newest first; each
    gets ``folder`` and ``path`` (absolute). Missing folder: empty list."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return []
    entries = []
    for name, entry in _read_manifest(folder)["layers"].items():
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS or not entry.get("file"):
            log.warning("%s: skipping malformed manifest entry %r", folder / MANIFEST, name)
            continue
        path = folder / str(entry["file"])
        if path.is_file():
            entries.append({**entry, "name": entry.get("name", name), "folder": str(folder), "path": str(path)})
    return sorted(entries, key=lambda e: str(e.get("saved_at", "")), reverse=True)


#: A restored label stack larger than this is memory-mapped from disk, not held in RAM.
RESTORE_MAX_RAM_MB = DEFAULT_MAX_RAM_MB


def load_snapshot(entry: Mapping[str, Any]) -> Tuple[Any, dict, str]:
    """``(data, kwargs, kind)`` of one :func:`list_snapshots` entry, ready for
    ``napari.layers.Layer.create(data, kwargs, kind)`` (no napari import here).
    ``kwargs`` holds the original layer name; the caller may rename."""
    kind = str(entry.get("kind"))
    _check_kind(kind)
    path = Path(entry.get("path") or Path(str(entry.get("folder", ""))) / str(entry.get("file", "")))
    if not path.is_file():
        raise DatasetError(f"{path}: autosaved snapshot not found")
    kwargs: dict = {"name": str(entry.get("name", path.stem))}
    kwargs.update(dict(entry.get("layer_kwargs") or {}))
    kwargs.pop("ndim", None)  # shapes take it from their file below; others infer it from the data
    kwargs["metadata"] = {**dict(entry.get("metadata") or {}), "autosave_restored_from": str(path)}
    if kind == "labels":
        data = read_labels_tiff(path, max_ram_mb=RESTORE_MAX_RAM_MB)
    elif kind == "points":
        table = read_points_csv(path)
        data = table.data
        if table.features:
            kwargs["features"] = table.features
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            shapes = doc["shapes"]
            data = [np.asarray(s["vertices"], dtype=float) for s in shapes]
            kwargs["shape_type"] = [str(s["type"]) for s in shapes]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: cannot read autosaved shapes ({exc})") from exc
        kwargs["ndim"] = int(doc.get("ndim", data[0].shape[1] if data else 2))
        if doc.get("features"):
            kwargs["features"] = {k: np.asarray(v) for k, v in doc["features"].items()}
        if doc.get("edge_colors") and len(doc["edge_colors"]) == len(data):
            kwargs["edge_color"] = np.asarray(doc["edge_colors"], dtype=float)
    return data, kwargs, kind
