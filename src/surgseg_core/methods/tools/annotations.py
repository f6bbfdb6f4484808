"""Tool landmark annotations: one record per annotated frame and active tool.

Fields: ``video`` (path of the video file or frame folder, relative to the
annotation file), ``frame`` (index from 0), ``tool_id`` (the active tool),
``tool_type`` (clip applier, grasper, ...), ``action`` (clip, grasp,
dissect, cut), ``tip`` (x, y) and ``anchor`` (x, y) in pixels of the
full-size frame (x right, y down, origin at the centre of the top-left
pixel). Only the ACTIVE tool is annotated, even when several are visible
(as in the paper). A frame annotated as showing no active tool landmark
has a record with ``tool_id`` None and no points (a negative frame);
frames with no record are not annotated (not used). A tip or anchor that is
not visible is None.

CSV (``tool_annotations.csv``)::

    video,frame,tool_id,tool_type,action,tip_x,tip_y,anchor_x,anchor_y
    video.mp4,12,3,grasper,grasp,101.5,88.0,120.25,97.0
    video.mp4,13,,,,,,,

JSON (``tool_annotations.json``)::

    {"format": "surgseg-tool-landmarks", "version": 1,
     "annotations": [{"video": "video.mp4", "frame": 12, "tool_id": 3, "tool_type": "grasper",
                      "action": "grasp", "tip": [101.5, 88.0], "anchor": [120.25, 97.0]}]}

Readers raise :class:`DatasetError` naming the file, the line/record and the
problem; :func:`validate_against_videos` checks frames and points against the
videos (missing frame, point outside the image).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ...atomic import atomic_write_text
from ...errors import DatasetError
from . import ACTIONS

FORMAT_NAME = "surgseg-tool-landmarks"
FORMAT_VERSION = 1
CSV_COLUMNS = ("video", "frame", "tool_id", "tool_type", "action", "tip_x", "tip_y", "anchor_x", "anchor_y")
CSV_NAME, JSON_NAME = "tool_annotations.csv", "tool_annotations.json"
Point = Optional[Tuple[float, float]]


@dataclass(frozen=True)
class ToolAnnotation:
    video: str
    frame: int
    tool_id: Optional[int]
    tool_type: Optional[str]
    action: Optional[str]
    tip: Point
    anchor: Point

    @property
    def negative(self) -> bool:
        """Annotated, but no active tool landmark in this frame."""
        return self.tool_id is None

    def point(self, kind: str) -> Point:
        return self.tip if kind == "tip" else self.anchor


def _where(path, loc) -> str:
    return f"{path}, {loc}"


def _make(path, loc, video, frame, tool_id, tool_type, action, tip, anchor,
          actions: Sequence[str]) -> ToolAnnotation:
    w = _where(path, loc)
    if not isinstance(video, str) or not video.strip():
        raise DatasetError(f"{w}: 'video' is empty (give the video file or frame folder, relative to {Path(path).name})")
    try:
        frame_f = float(frame)
        if isinstance(frame, bool) or not frame_f.is_integer() or frame_f < 0:
            raise ValueError
        frame = int(frame_f)
    except (TypeError, ValueError):
        raise DatasetError(f"{w}: frame must be a whole number >= 0, got {frame!r}") from None
    for name, p in (("tip", tip), ("anchor", anchor)):
        if p is not None and not all(math.isfinite(v) for v in p):
            raise DatasetError(f"{w}: {name} has a NaN or infinite coordinate: {p}")
    if tool_id is None:
        if tip is not None or anchor is not None or action:
            raise DatasetError(f"{w}: points or an action without a tool_id; give the active tool's id "
                               "(or leave the whole row empty for a frame without an active tool)")
        return ToolAnnotation(video, frame, None, None, None, None, None)
    try:
        tid_f = float(tool_id)
        if isinstance(tool_id, bool) or not tid_f.is_integer():
            raise ValueError
        tool_id = int(tid_f)
    except (TypeError, ValueError):
        raise DatasetError(f"{w}: tool_id must be a whole number, got {tool_id!r}") from None
    if action not in actions:
        raise DatasetError(f"{w}: unknown action {action!r}; known actions: {', '.join(actions)}")
    if tip is None and anchor is None:
        raise DatasetError(f"{w}: tool {tool_id} has neither a tip nor an anchor point")
    return ToolAnnotation(video, frame, tool_id, (tool_type or None), action, tip, anchor)


def _csv_point(path, n, row, name) -> Point:
    xs, ys = (row.get(f"{name}_x") or "").strip(), (row.get(f"{name}_y") or "").strip()
    if not xs and not ys:
        return None
    if not xs or not ys:
        raise DatasetError(f"{path}, line {n}: {name}_x and {name}_y go together (one of them is empty)")
    try:
        return float(xs), float(ys)
    except ValueError:
        raise DatasetError(f"{path}, line {n}: {name} coordinates must be numbers, got {xs!r}, {ys!r}") from None


def read_csv(path, actions: Sequence[str] = ACTIONS) -> List[ToolAnnotation]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read tool annotations {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in CSV_COLUMNS if c not in fields]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}")
    reader.fieldnames = fields
    out = []
    for n, row in enumerate(reader, start=2):
        val = lambda key: (row.get(key) or "").strip() or None  # noqa: E731
        out.append(_make(path, f"line {n}", val("video") or "", val("frame"), val("tool_id"), val("tool_type"),
                         val("action"), _csv_point(path, n, row, "tip"), _csv_point(path, n, row, "anchor"),
                         actions))
    _check_unique(path, out)
    return out


def _json_point(path, i, rec, name) -> Point:
    p = rec.get(name)
    if p is None:
        return None
    if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in p):
        raise DatasetError(f"{path}, annotation {i}: {name} must be [x, y] numbers or null, got {p!r}")
    return float(p[0]), float(p[1])


def read_json(path, actions: Sequence[str] = ACTIONS) -> List[ToolAnnotation]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read tool annotations {path}: {exc}") from None
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: expected an object with an 'annotations' list (format {FORMAT_NAME!r})")
    if data.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise DatasetError(f"{path}: format {data.get('format')!r} is not {FORMAT_NAME!r}")
    out = []
    for i, rec in enumerate(data["annotations"]):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}, annotation {i}: expected an object, got {type(rec).__name__}")
        out.append(_make(path, f"annotation {i}", rec.get("video") or "", rec.get("frame"), rec.get("tool_id"),
                         rec.get("tool_type"), rec.get("action"), _json_point(path, i, rec, "tip"),
                         _json_point(path, i, rec, "anchor"), actions))
    _check_unique(path, out)
    return out


def _check_unique(path, records: Sequence[ToolAnnotation]) -> None:
    seen = set()
    negative = set()
    tools: Dict[tuple, int] = {}
    for r in records:
        key = (r.video, r.frame, r.tool_id)
        if key in seen:
            raise DatasetError(f"{path}: frame {r.frame} of {r.video} has tool {r.tool_id} twice")
        seen.add(key)
        if r.negative:
            negative.add((r.video, r.frame))
        else:
            tools[(r.video, r.frame)] = r.tool_id
    both = negative & set(tools)
    if both:
        video, frame = sorted(both)[0]
        raise DatasetError(f"{path}: frame {frame} of {video} is annotated both with tool {tools[(video, frame)]} "
                           "and as having no active tool")


def read_annotations(path, actions: Sequence[str] = ACTIONS) -> List[ToolAnnotation]:
    """Read a ``.csv`` or ``.json`` annotation file (by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"tool annotations not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path, actions)
    if suffix == ".json":
        return read_json(path, actions)
    raise DatasetError(f"{path}: tool annotations must be .csv or .json")


def validate_against_videos(records: Sequence[ToolAnnotation], base: Path,
                            video_info: Callable[[Path], Tuple[int, int, int]], where: Any = "") -> None:
    """Check every record against its video: ``video_info(path) -> (n_frames,
    height, width)``. Raises DatasetError for a missing video, a frame past the
    end, or a point outside the image."""
    info: Dict[str, Tuple[int, int, int]] = {}
    for r in records:
        if r.video not in info:
            vpath = Path(base) / r.video
            if not vpath.exists():
                raise DatasetError(f"{where or base}: video {r.video!r} not found at {vpath}")
            info[r.video] = video_info(vpath)
        n, h, w = info[r.video]
        if r.frame >= n:
            raise DatasetError(f"{where or base}: frame {r.frame} of {r.video} does not exist "
                               f"(the video has {n} frames, 0..{n - 1})")
        for name in ("tip", "anchor"):
            p = r.point(name)
            # pixel centres are integers: the image covers -0.5 .. size - 0.5
            if p is not None and not (-0.5 <= p[0] <= w - 0.5 and -0.5 <= p[1] <= h - 0.5):
                raise DatasetError(f"{where or base}: frame {r.frame} of {r.video}, tool {r.tool_id}: {name} "
                                   f"({p[0]:g}, {p[1]:g}) is outside the {w}x{h} image")


def _fmt(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.3f}"


def to_csv_text(records: Iterable[ToolAnnotation]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        tip, anc = r.tip or (None, None), r.anchor or (None, None)
        w.writerow([r.video, r.frame, "" if r.tool_id is None else r.tool_id, r.tool_type or "", r.action or "",
                    _fmt(tip[0]), _fmt(tip[1]), _fmt(anc[0]), _fmt(anc[1])])
    return buf.getvalue()


def to_json_obj(records: Iterable[ToolAnnotation], extra: Optional[Mapping[str, Any]] = None) -> dict:
    rnd = lambda p: None if p is None else [round(float(p[0]), 3), round(float(p[1]), 3)]  # noqa: E731
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dict(extra or {}),
            "annotations": [{"video": r.video, "frame": r.frame, "tool_id": r.tool_id, "tool_type": r.tool_type,
                             "action": r.action, "tip": rnd(r.tip), "anchor": rnd(r.anchor)} for r in records]}


def write_annotations(path, records: Iterable[ToolAnnotation], extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``.csv`` or ``.json`` (by suffix) atomically."""
    path = Path(path)
    records = list(records)
    if path.suffix.lower() == ".csv":
        return atomic_write_text(path, to_csv_text(records))
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps(to_json_obj(records, extra), indent=1) + "\n")
    raise DatasetError(f"{path}: tool annotations are written as .csv or .json")


def find_annotation_files(root) -> List[Path]:
    """Annotation files under ``root`` (a file, or a folder searched
    recursively for tool_annotations.csv / .json; a folder with both uses the CSV)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"tool landmark data not found: {root}")
    found = sorted(root.rglob(CSV_NAME))
    have = {p.parent for p in found}
    found += [p for p in sorted(root.rglob(JSON_NAME)) if p.parent not in have]
    if not found:
        raise DatasetError(f"{root}: no {CSV_NAME} or {JSON_NAME} found (write one per clip; the synthetic "
                           "generator 'python -m surgseg_core.synth clip' writes them)")
    return sorted(found)


def frames_by_index(records: Sequence[ToolAnnotation]) -> Dict[Tuple[str, int], List[ToolAnnotation]]:
    """{(video, frame): [records]} (negative frames map to [])."""
    out: Dict[Tuple[str, int], List[ToolAnnotation]] = {}
    for r in records:
        lst = out.setdefault((r.video, r.frame), [])
        if not r.negative:
            lst.append(r)
    return out


def records_from_points(video: str, frame: int, points: Iterable[Tuple[str, int, float, float]], *,
                        action: str, tool_types: Optional[Mapping[int, Optional[str]]] = None,
                        actions: Sequence[str] = ACTIONS) -> List[ToolAnnotation]:
    """The annotation records of one frame from its landmarks ``(type, tool,
    x, y)`` (corrected predictions): one record per tool, with ``action``
    and ``tool_types[tool]``; no points: the frame is a negative (no active
    tool). DatasetError for an unknown type or action, or a tool with two
    tips (or two anchors)."""
    where = f"frame {frame} of {video}"
    by_tool: Dict[int, Dict[str, Tuple[float, float]]] = {}
    for kind, tool, x, y in points:
        if kind not in ("tip", "anchor"):
            raise DatasetError(f"{where}: landmark type must be tip or anchor, got {kind!r}")
        pts = by_tool.setdefault(int(tool), {})
        if kind in pts:
            raise DatasetError(f"{where}: tool {int(tool)} has two {kind}s; give each point its own tool or "
                               "delete one")
        pts[kind] = (float(x), float(y))
    if not by_tool:
        return [ToolAnnotation(video, int(frame), None, None, None, None, None)]
    types = dict(tool_types or {})
    return [_make(video, where, video, frame, tool, types.get(tool), action, pts.get("tip"), pts.get("anchor"),
                  actions) for tool, pts in sorted(by_tool.items())]


def replace_frames(path, records: Sequence[ToolAnnotation], actions: Sequence[str] = ACTIONS,
                   provenance: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``records`` into the annotation file ``path`` (.csv / .json),
    replacing what it had for their (video, frame)s and keeping the rest;
    the file is created when missing (atomic write, then read back).
    ``provenance`` (of these records' video) goes into the sidecar
    ``<file>.provenance.json`` under ``"videos"`` -> the records' video name,
    its frames joining those recorded before."""
    path = Path(path)
    old = read_annotations(path, actions) if path.exists() else []
    redone = {(r.video, r.frame) for r in records}
    keep = [r for r in old if (r.video, r.frame) not in redone]
    merged = sorted(keep + list(records), key=lambda r: (r.video, r.frame, -1 if r.tool_id is None else r.tool_id))
    _check_unique(path, merged)
    write_annotations(path, merged)
    read_annotations(path, actions)  # what training will read
    if provenance is not None:
        _add_video_provenance(path, {r.video for r in records}, provenance)
    return path


def _add_video_provenance(path: Path, videos, provenance: Mapping[str, Any]) -> None:
    from ...provenance import build_provenance, read_provenance, write_sidecar

    try:
        doc = read_provenance(path, current=False) if path.exists() else {}  # merged: the file was just rewritten
    except (OSError, ValueError):
        doc = {}
    per_video = dict(doc.get("videos") or {})
    for video in videos:
        before = per_video.get(video) or {}
        frames = sorted({*map(int, before.get("frames") or []), *map(int, provenance.get("frames") or [])})
        per_video[video] = {**dict(provenance), "frames": frames}
    write_sidecar(path, build_provenance(base={**doc, "videos": per_video}, result="tool annotations",
                                         frames=sorted({f for v in per_video.values() for f in v["frames"]})))


__all__ = ["ToolAnnotation", "CSV_COLUMNS", "CSV_NAME", "JSON_NAME", "FORMAT_NAME", "read_annotations", "read_csv",
           "read_json", "write_annotations", "validate_against_videos", "find_annotation_files", "frames_by_index",
           "to_csv_text", "to_json_obj", "records_from_points", "replace_frames"]
