"""Provenance of every saved result: the one builder (issue 15).

Labels, points, curves, overlay videos, autosaves, predictions, correction
datasets and evaluation metrics carry one flat record, so a result can be
traced to what it was made from and reproduced::

    result                 what the file is ("labels", "points", "curves", ...)
    source_video           absolute path of the video (file, frame folder or pattern)
    source_video_sha256    SHA-256 of its bytes (a frame folder: of its files' hashes)
    source_video_size      bytes
    frames                 source frame index of each frame written (or that holds data)
    frame_map              {"start", "step"}: frame i of the file is source frame start + i * step
    model_name, model_variant, model_checkpoint, model_sha256   when a model made it
    prompts                the prompts the model was given
    options                settings of the run
    surgseg_version, created

A method's own record (``base``: what the SAM2 engine, the liver or tools
predictor, or a napari layer's ``metadata["provenance"]`` hold) is kept, the
fields above added. Where the record goes depends on the format: the
description of a label TIFF, ``provenance.json`` in a PNG mask folder, a
``"provenance"`` key in our JSON files, and a ``<file>.provenance.json``
sidecar next to CSV, XML and MP4 files (:func:`attach`, :func:`read_provenance`).

Video hashes are cached by (path, size, mtime) in memory and in
``<user cache>/surgseg/file_hashes.json`` (``$SURGSEG_HASH_CACHE``), so a
multi-GB video is read once, not at every save; a changed file is re-hashed.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

KEY = "provenance"
SIDECAR_SUFFIX = ".provenance.json"
FOLDER_FILE = "provenance.json"
ENV_HASH_CACHE = "SURGSEG_HASH_CACHE"
_FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

_LOCK = threading.Lock()
_MEMORY: Dict[str, list] = {}  # abs path -> [size, mtime_ns, sha256]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def surgseg_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------
# Hashes (cached by size + mtime)
# --------------------------------------------------------------------------


def _cache_file() -> Path:
    override = os.environ.get(ENV_HASH_CACHE)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("surgseg")) / "file_hashes.json"


def _load_disk_cache() -> Dict[str, list]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(key: str, stamp: list) -> None:
    _MEMORY[key] = stamp
    try:
        from .atomic import atomic_write_text

        cache = _load_disk_cache()
        cache[key] = stamp
        if len(cache) > 5000:  # keep the newest entries' worth of a lab's videos
            cache = dict(list(cache.items())[-5000:])
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache))
    except Exception as exc:  # a cache that cannot be written costs time, never the save
        log.debug("hash cache not written: %s", exc)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file, re-read only when its size or mtime changed."""
    from .weights.hashing import sha256_file

    p = Path(path).expanduser().absolute()
    st = p.stat()
    key = str(p)

    def fresh(stamp: Any) -> bool:
        return isinstance(stamp, list) and len(stamp) == 3 and stamp[:2] == [st.st_size, st.st_mtime_ns]

    with _LOCK:
        stamp = _MEMORY.get(key)
        if not fresh(stamp):
            stamp = _load_disk_cache().get(key)
        if fresh(stamp):
            _MEMORY[key] = stamp
            return str(stamp[2])
    digest = sha256_file(p)
    with _LOCK:
        _store(key, [st.st_size, st.st_mtime_ns, digest])
    return digest


def cached_sha256(path: PathLike) -> Optional[str]:
    """The file's SHA-256 when a hash of its current size and mtime is
    cached (never reads the file; None otherwise)."""
    p = Path(path).expanduser().absolute()
    try:
        st = p.stat()
    except OSError:
        return None
    with _LOCK:
        for stamp in (_MEMORY.get(str(p)), _load_disk_cache().get(str(p))):
            if isinstance(stamp, list) and len(stamp) == 3 and stamp[:2] == [st.st_size, st.st_mtime_ns]:
                return str(stamp[2])
    return None


def _frame_files(source: Path) -> list:
    if source.is_dir():
        return sorted(f for f in source.iterdir() if f.is_file() and f.suffix.lower() in _FRAME_SUFFIXES
                      and not f.name.startswith("."))
    import glob

    return sorted(Path(p) for p in glob.glob(str(source)) if Path(p).is_file())


def video_identity(source: Optional[PathLike]) -> Dict[str, Any]:
    """``{"source_video", "source_video_sha256", "source_video_size"}`` of a
    video file, a frame folder or a glob pattern of frames (hashed over its
    frames' names and hashes). A source that is gone keeps its path, hash None."""
    if source is None or str(source) in ("", "."):
        return {"source_video": None, "source_video_sha256": None, "source_video_size": None}
    p = Path(source).expanduser().absolute()
    out: Dict[str, Any] = {"source_video": str(p), "source_video_sha256": None, "source_video_size": None}
    try:
        if p.is_file():
            out["source_video_sha256"] = file_sha256(p)
            out["source_video_size"] = p.stat().st_size
        else:
            files = _frame_files(p)
            if files:
                import hashlib

                h = hashlib.sha256()
                for f in files:
                    h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
                out["source_video_sha256"] = h.hexdigest()
                out["source_video_size"] = sum(f.stat().st_size for f in files)
    except OSError as exc:
        log.warning("provenance: cannot hash %s (%s)", p, exc)
    return out


def hash_in_background(source: Optional[PathLike]) -> None:
    """Start hashing ``source`` in a daemon thread (on opening a video) so
    the first save does not wait for a multi-GB read."""
    if not source:
        return

    def run() -> None:
        try:
            video_identity(source)
        except Exception as exc:  # a background convenience: the save hashes (and reports) again
            log.debug("background hash of %s failed: %s", source, exc)

    threading.Thread(target=run, name="surgseg-video-hash", daemon=True).start()


# --------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------


def _model_fields(model: Mapping[str, Any]) -> Dict[str, Any]:
    name = model.get("model_name") or (model.get("model") if isinstance(model.get("model"), str) else None) or \
        model.get("name") or model.get("method")
    return {
        "model_name": name,
        "model_variant": model.get("model_variant", model.get("variant")),
        "model_checkpoint": model.get("model_checkpoint", model.get("checkpoint")),
        "model_sha256": model.get("model_sha256", model.get("checkpoint_sha256")),
    }


def _frames(frames: Optional[Iterable[Any]]) -> Optional[list]:
    if frames is None:
        return None
    return sorted({int(round(float(f))) for f in frames})


def build_provenance(
    *,
    result: Optional[str] = None,
    source: Optional[PathLike] = None,
    frames: Optional[Iterable[Any]] = None,
    frame_map: Optional[Mapping[str, float]] = None,
    model: Optional[Mapping[str, Any]] = None,
    prompts: Optional[Sequence[Any]] = None,
    options: Optional[Mapping[str, Any]] = None,
    base: Optional[Mapping[str, Any]] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """The provenance record of one result (see the module docstring):
    ``base`` (a method's or layer's record) plus the standard fields; a field
    given here replaces base's, one not given keeps base's."""
    record: Dict[str, Any] = dict(base or {})
    if result is not None:
        record["result"] = result
    record.setdefault("result", None)
    if source is not None or "source_video" not in record:
        record.update(video_identity(source))
    record.setdefault("source_video_sha256", None)
    record.setdefault("source_video_size", None)
    if frames is not None:
        record["frames"] = _frames(frames)
    record.setdefault("frames", None)
    if frame_map is not None:
        record["frame_map"] = {"start": float(frame_map.get("start", 0)), "step": float(frame_map.get("step", 1))}
    fields = _model_fields(model if model is not None else record)
    for k, v in fields.items():
        if model is not None or record.get(k) is None:
            record[k] = v
    if prompts is not None:
        record["prompts"] = list(prompts)
    record.setdefault("prompts", None)
    if options is not None:
        record["options"] = dict(options)
    record.update(extra)
    record["surgseg_version"] = surgseg_version()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record.setdefault("created", now)  # when the result was made (a model run), kept through later saves
    record["saved"] = now
    return record


def frames_of_placement(n_frames: int, start: float = 0.0, step: float = 1.0) -> list:
    """Source frame of each of ``n_frames`` frames placed at ``start + i * step``."""
    return [int(round(start + i * step)) for i in range(int(n_frames))]


# --------------------------------------------------------------------------
# Where it goes
# --------------------------------------------------------------------------


def sidecar_path(target: PathLike) -> Path:
    target = Path(target)
    return target.with_name(target.name + SIDECAR_SUFFIX)


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, indent=1, default=str)


def write_sidecar(target: PathLike, record: Mapping[str, Any], *, stamp: bool = True) -> Path:
    """``<target>.provenance.json`` next to ``target``, atomically, written
    after ``target``. With ``stamp`` it records ``target``'s size and mtime:
    the file and its sidecar are two writes, and a kill between them would
    leave a new file beside the previous file's record; :func:`read_provenance`
    refuses a record whose stamp no longer fits (off for files that grow, such
    as a training run's metrics.jsonl)."""
    from .atomic import atomic_write_text

    record = dict(record)
    if stamp and Path(target).is_file():
        st = Path(target).stat()
        record[STAMP_KEY] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return Path(atomic_write_text(sidecar_path(target), dumps(record) + "\n"))


STAMP_KEY = "for_file"  # the size and mtime of the file a sidecar describes


def read_provenance(path: PathLike, *, current: bool = True) -> Dict[str, Any]:
    """The provenance saved with a result: a folder's ``provenance.json``, a
    label TIFF's description, a JSON file's ``"provenance"`` key, or the
    ``.provenance.json`` sidecar. Empty when there is none. ``current``: a
    sidecar stamped for another version of the file counts as none (with a
    warning); False reads it anyway (a writer merging its earlier record)."""
    p = Path(path)
    if p.is_dir():
        f = p / FOLDER_FILE
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
    side = sidecar_path(p)
    if side.is_file():
        record = json.loads(side.read_text(encoding="utf-8"))
        stamp = record.get(STAMP_KEY) if isinstance(record, dict) else None
        if current and isinstance(stamp, dict) and p.is_file():
            st = p.stat()
            if (st.st_size, st.st_mtime_ns) != (stamp.get("size"), stamp.get("mtime_ns")):
                import warnings

                warnings.warn(f"{side} describes an earlier version of {p.name} (the file changed after its "
                              "record was written): no provenance for the file as it is", UserWarning, stacklevel=2)
                return {}
        return record
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(p) as tif:
            desc = tif.pages[0].description or ""
        try:
            return dict(json.loads(desc).get(KEY) or {})
        except (ValueError, AttributeError):
            return {}
    if suffix == ".png":
        from PIL import Image

        with Image.open(p) as im:
            text = (getattr(im, "text", None) or {}).get(KEY)
        return json.loads(text) if text else {}
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        return dict(data.get(KEY) or {}) if isinstance(data, dict) else {}
    return {}


def source_fields(frames: Any, written: Optional[Iterable[int]] = None, *, path: Optional[PathLike] = None) -> dict:
    """``source``, ``frames`` and ``frame_map`` keyword arguments of
    :func:`build_provenance` for results of a frame source (a path, a
    ``FrameSource`` of a frame range / stride, or an array: no path):
    ``written`` are indices into ``frames``, recorded as source frames."""
    meta = getattr(frames, "metadata", None)
    if path is None:
        path = str(frames) if isinstance(frames, (str, os.PathLike)) else getattr(meta, "path", None)
    start, step = float(getattr(meta, "start", 0) or 0), float(getattr(meta, "step", 1) or 1)
    out: dict = {"source": path, "frame_map": {"start": start, "step": step}}
    if written is not None:
        out["frames"] = [start + int(i) * step for i in written]
    return out


def folder_fingerprint(path: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    """A cheap identity of a dataset folder (training data can be many GB:
    not hashed): its path, file count, total bytes and newest mtime."""
    if not path:
        return None
    p = Path(path).expanduser().absolute()
    if p.is_file():
        return {"path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size}
    files = size = 0
    newest = 0
    for root, _dirs, names in os.walk(p):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"path": str(p), "files": files, "bytes": size,
            "newest_mtime": _dt.datetime.fromtimestamp(newest / 1e9, _dt.timezone.utc).isoformat(timespec="seconds")
            if newest else None}


def checkpoint_identity(method: str, checkpoint: Optional[PathLike], variant: Optional[str] = None) -> Dict[str, Any]:
    """``model`` argument of :func:`build_provenance` for a method's checkpoint file."""
    known = checkpoint is not None and Path(str(checkpoint)).is_file()
    return {"name": method, "variant": variant, "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "checkpoint_sha256": file_sha256(checkpoint) if known else None}


def attach(path: PathLike, record: Mapping[str, Any]) -> Path:
    """Record provenance with a file already written: a PNG gets a text
    chunk (rewritten atomically; pixels unchanged: PNG is lossless), any
    other file a ``.provenance.json`` sidecar. Returns where it went."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".png":
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        from .atomic import atomic_path

        info = PngInfo()
        with Image.open(p) as im:
            im.load()
            for key, value in (getattr(im, "text", None) or {}).items():
                if key != KEY:
                    info.add_text(key, value)
            info.add_text(KEY, dumps(record))
            with atomic_path(p) as tmp:
                im.save(tmp, format="PNG", pnginfo=info)
        return p
    return write_sidecar(p, record)
