"""Corrections made in the viewer become training data.

:func:`export_corrections` writes the corrected frames of a video in exactly
the layout the trainer reads (:mod:`.image_mask`)::

    out_dir/images/<stem>.png     the video frame (lossless)
    out_dir/masks/<stem>.png      the corrected index mask
    out_dir/points.csv            corrected points (stem, frame, y, x, class)
    out_dir/curves.json           corrected curves {stem: {class: [[[x, y], ...], ...]}}
    out_dir/provenance.json       where every item came from (video, frame, who, when)

Exporting into an existing folder adds to it (stems carry the video name so
clips don't collide). Every file is written atomically; provenance.json last.
"""
from __future__ import annotations

import csv
import datetime as _dt
import getpass
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..atomic import atomic_path, atomic_write_text
from ..errors import DatasetError
from ..progress import CancelToken, ProgressCallback, check_cancel, report

PathLike = Union[str, os.PathLike]
#: ``method`` of an export for no method in particular (labels as they are)
GENERIC = "generic"


def _curve_rasterizer(method: str):
    """How ``method`` turns corrected curves into a training mask (its
    spec's ``rasterize_curves``), None for label maps only; DatasetError
    for a method that is not registered."""
    if method == GENERIC:
        return None
    from ..errors import ConfigError
    from ..training.method import available_methods, get_method

    try:
        return get_method(method).rasterize_curves
    except ConfigError:
        raise DatasetError(f"method must be {GENERIC!r} or a registered method "
                           f"({', '.join(available_methods())}), got {method!r}") from None


def _frame_count(frames: Any) -> int:
    try:
        return int(len(frames))
    except TypeError:
        raise DatasetError("frames must be an array-like of shape (T, H, W, 3)") from None


def _to_rgb_uint8(frame: Any, index: int) -> np.ndarray:
    from ..errors import VideoError
    from ..io.pixels import frame_to_rgb8

    try:
        return frame_to_rgb8(frame, f"frame {index}")
    except VideoError as exc:
        raise DatasetError(str(exc)) from None


def _label_at(labels: Any, index: int) -> Optional[np.ndarray]:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        value = labels.get(index)
        return None if value is None else np.asarray(value)
    if index >= len(labels):
        return None
    return np.asarray(labels[index])


def _label_frames(labels: Any, n_frames: int) -> Iterable[int]:
    if labels is None:
        return []
    if isinstance(labels, Mapping):
        return sorted(int(k) for k in labels)
    return range(min(n_frames, len(labels)))


def _points_array(points: Any) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] not in (3, 4):
        raise DatasetError(f"points must be an (N, 3) array of [frame, y, x] (napari order), got shape {arr.shape}")
    return arr


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


#: Why a frame is exported (``provenance.json`` items, the widget's status).
REASON_MODEL_DIFF = "labels differ from the model output"
REASON_LABELS_EDITED = "labels edited on this frame"
REASON_HAS_LABELS = "has labels (no model output or edit record to compare with)"
REASON_POINTS_EDITED = "points edited on this frame"
REASON_HAS_POINTS = "has points (no edit record of the points layer)"
REASON_CURVES = "has curves"


def corrected_frame_reasons(labels: Any, n_frames: int, model_labels: Any = None, points: Any = None,
                            curves: Optional[Mapping] = None, *, edited_frames: Optional[Iterable[int]] = None,
                            edited_point_frames: Optional[Iterable[int]] = None) -> Dict[int, List[str]]:
    """Frames worth exporting, each with why.

    Labels: frames differing from the model's output (``model_labels``); else,
    with an edit record (``edited_frames``: frames painted on), the edited
    frames; else frames with any non-zero label. Points: with an edit record
    (``edited_point_frames``), frames where points were added, moved or
    removed; else every frame with points. Plus frames with curves."""
    reasons: Dict[int, List[str]] = {}

    def add(t: int, why: str) -> None:
        if 0 <= t < n_frames:
            reasons.setdefault(int(t), []).append(why)

    edited = None if edited_frames is None else {int(t) for t in edited_frames}
    for t in _label_frames(labels, n_frames):
        if model_labels is None and edited is not None:
            break
        lab = _label_at(labels, t)
        if lab is None:
            continue
        ref = _label_at(model_labels, t) if model_labels is not None else None
        if ref is not None:
            if ref.shape != lab.shape or not np.array_equal(ref, lab):
                add(t, REASON_MODEL_DIFF)
        elif model_labels is None and np.any(lab):
            add(t, REASON_HAS_LABELS)
    if labels is not None and model_labels is None and edited is not None:
        for t in sorted(edited):
            if _label_at(labels, t) is not None:
                add(t, REASON_LABELS_EDITED)
    if edited_point_frames is not None:
        for t in sorted({int(t) for t in edited_point_frames}):
            add(t, REASON_POINTS_EDITED)
    elif points is not None:
        for t in sorted({int(round(f)) for f in _points_array(points)[:, 0]}):
            add(t, REASON_HAS_POINTS)
    for k, v in (curves or {}).items():
        if v:
            add(int(k), REASON_CURVES)
    return dict(sorted(reasons.items()))


def default_corrected_frames(labels: Any, n_frames: int, model_labels: Any = None,
                             points: Any = None, curves: Optional[Mapping] = None, **edits: Any) -> List[int]:
    """The frames of :func:`corrected_frame_reasons`, sorted."""
    return list(corrected_frame_reasons(labels, n_frames, model_labels, points, curves, **edits))


def export_corrections(
    out_dir: PathLike,
    *,
    frames: Any,
    labels: Any = None,
    points: Any = None,
    curves: Optional[Mapping[int, Mapping[Any, Sequence[Any]]]] = None,
    frame_indices: Optional[Union[Sequence[int], Mapping[int, Sequence[str]]]] = None,
    model_labels: Any = None,
    edited_frames: Optional[Iterable[int]] = None,
    edited_point_frames: Optional[Iterable[int]] = None,
    point_classes: Optional[Sequence[Any]] = None,
    method: str = "generic",
    provenance: Optional[Mapping[str, Any]] = None,
    line_thickness: float = 3.0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write the corrected frames as an image_mask training dataset; returns ``out_dir``.

    frames: array-like (T, H, W, 3) (read one frame at a time, never whole).
    labels: array-like (T, H, W) of class indices, or ``{frame: mask}``.
    points: (N, 3) [frame, y, x] (napari order), optional ``point_classes``.
    curves: ``{frame: {class: [polyline (K, 2) as x, y, ...]}}``; for a
        method that learns from curves (its spec's ``rasterize_curves``, e.g.
        "liver") frames without a label mask get the curves drawn into their
        mask (``line_thickness`` px), as its trainer expects.
    method: "generic" or a registered method name (recorded in provenance.json).
    frame_indices: which frames to export; default
        :func:`corrected_frame_reasons` (with ``edited_frames`` /
        ``edited_point_frames``, the edit records of the labels / points:
        only edited frames), or ``{frame: [why, ...]}``; each item's
        provenance says why it is included (``included_because``).
    provenance: ``source_video``, ``who``, ``when`` (filled in if missing),
        ``frame_map`` (frame t of ``frames`` is source frame start + t * step)
        and the model's record (a layer's provenance); ``provenance.json``
        gets the shared fields of :func:`surgseg_core.provenance.build_provenance`
        (video hash, source frames, model and its hash), each item its
        scalar fields and its ``source_frame``.
    """
    rasterize = _curve_rasterizer(method)
    out = Path(out_dir)
    n_frames = _frame_count(frames)
    pts = _points_array(points) if points is not None else np.zeros((0, 3))
    if point_classes is not None and len(point_classes) != len(pts):
        raise DatasetError(f"point_classes has {len(point_classes)} entries for {len(pts)} points")
    if frame_indices is None:
        reasons = corrected_frame_reasons(labels, n_frames, model_labels, points, curves,
                                          edited_frames=edited_frames, edited_point_frames=edited_point_frames)
        frame_indices = list(reasons)
    elif isinstance(frame_indices, Mapping):  # {frame: [why, ...]} (corrected_frame_reasons)
        reasons = {int(t): list(v) if isinstance(v, (list, tuple)) else [str(v)] for t, v in frame_indices.items()}
    else:
        reasons = {int(t): ["chosen frame"] for t in frame_indices}
    frame_indices = sorted({int(t) for t in frame_indices})
    bad = [t for t in frame_indices if not 0 <= t < n_frames]
    if bad:
        raise DatasetError(f"frame indices {bad[:5]} are outside the video (0..{n_frames - 1})")
    if not frame_indices:
        raise DatasetError("nothing to export: no corrected frames (labels empty and equal to the model output)")

    from ..provenance import build_provenance

    prov = dict(provenance or {})
    prov.setdefault("who", getpass.getuser() if hasattr(getpass, "getuser") else "unknown")
    prov.setdefault("when", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    fmap = dict(prov.get("frame_map") or {})
    start, step = float(fmap.get("start", 0) or 0), float(fmap.get("step", 1) or 1)
    given = prov.get("source_video")
    prov = build_provenance(base=prov, result="dataset:corrections", frames=[start + t * step for t in frame_indices],
                            frame_map={"start": start, "step": step},
                            source=given if given and Path(str(given)).exists() else None)
    source = prov.get("source_video")
    prefix = Path(str(source)).stem if source else "frame"
    prefix = "".join(c if c.isalnum() or c in "-_" else "_" for c in prefix) or "frame"

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    items: Dict[str, Dict[str, Any]] = {}
    stems: Dict[int, str] = {}
    for done, t in enumerate(frame_indices):
        check_cancel(cancel)
        stem = f"{prefix}_f{t:06d}"
        stems[t] = stem
        image = _to_rgb_uint8(frames[t], t)
        mask = _label_at(labels, t)
        if mask is None and rasterize is not None and curves and curves.get(t):
            mask = rasterize({int(k): v for k, v in curves[t].items()}, image.shape[:2], line_thickness)
        if mask is None:
            mask = np.zeros(image.shape[:2], np.uint8)
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"frame {t}: labels are {mask.shape[1]}x{mask.shape[0]} but the frame is "
                               f"{image.shape[1]}x{image.shape[0]} (width x height)")
        if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
            raise DatasetError(f"frame {t}: label values must be 0..255 class indices, found "
                               f"{int(mask.min())}..{int(mask.max())}")
        with atomic_path(out / "images" / f"{stem}.png") as tmp:
            tmp.write_bytes(_png_bytes(image))
        with atomic_path(out / "masks" / f"{stem}.png") as tmp:
            tmp.write_bytes(_png_bytes(mask.astype(np.uint8)))
        items[stem] = {"frame": t, "source_frame": int(round(start + t * step)),
                       **{k: v for k, v in prov.items() if isinstance(v, (str, int, float)) and k not in _RUN_ONLY},
                       "included_because": "; ".join(reasons.get(t, []))}
        report(progress, done + 1, len(frame_indices), f"frame {t}")

    if len(pts):
        _write_points(out / "points.csv", pts, point_classes, stems)
    if curves:
        _write_curves(out / "curves.json", curves, stems)
    _write_provenance(out / "provenance.json", items, method, prov)
    return out


def _write_points(path: Path, pts: np.ndarray, classes, stems: Mapping[int, str]) -> None:
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("stem") not in set(stems.values())]
    for i, p in enumerate(pts):
        t = int(round(p[0]))
        if t not in stems:
            continue
        cls = classes[i] if classes is not None else (int(p[3]) if len(p) > 3 else "")
        rows.append({"stem": stems[t], "frame": t, "y": f"{p[1]:.3f}", "x": f"{p[2]:.3f}", "class": cls})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["stem", "frame", "y", "x", "class"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_curves(path: Path, curves: Mapping, stems: Mapping[int, str]) -> None:
    data: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for t, per_class in curves.items():
        if int(t) not in stems:
            continue
        data[stems[int(t)]] = {
            str(cls): [np.asarray(pl, dtype=float).reshape(-1, 2).round(3).tolist() for pl in polylines]
            for cls, polylines in per_class.items()
        }
    atomic_write_text(path, json.dumps(data, indent=1))


#: fields of the record kept at the top of provenance.json only (not repeated per item)
_RUN_ONLY = {"created", "saved", "result", "surgseg_version"}


def _write_provenance(path: Path, items: Mapping[str, Any], method: str, record: Mapping[str, Any]) -> None:
    from .. import __version__

    data: Dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
    data.setdefault("format", "image_mask")
    data.update({k: v for k, v in record.items() if k != "frames"})
    data["frames"] = sorted({*map(int, data.get("frames") or []), *(int(round(f)) for f in record.get("frames") or [])})
    data["method"] = method
    data["surgseg_version"] = __version__
    data.setdefault("items", {}).update(items)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
