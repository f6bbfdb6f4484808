"""Corrections that propagate: re-run SAM2 from a corrected frame into an
existing label stack, keep validated frames, undo a whole run.

The one code path behind the "Re-propagate from this frame" button of the
"Track with SAM2" widget and Python use::

    from surgseg_core.sam2_engine.refine import FrameUndo, repropagate
    undo = FrameUndo()
    repropagate(frames, labels, 120, direction="forward", validated=[[200, 210]],
                model="sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny", undo=undo)
    undo.restore(labels)  # the stack as it was before the run

``labels`` is the (T, H, W) stack to refine in place (a numpy array, a
memory map, a napari Labels layer's data). The corrected frame's masks
become SAM2 mask prompts for their objects, and so do the validated frames
on the side being propagated ("lock and refine"); the corrected frame,
validated frames and the frames on the other side are never written.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ..errors import Cancelled, ConfigError
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from ..provenance import build_provenance as _build_provenance, source_fields
from .outputs import FrameResult

log = logging.getLogger(__name__)

#: Layer metadata key of the validated (checked) frames: ``[[first, last], ...]`` inclusive spans.
VALIDATED_KEY = "validated_frames"

Spans = List[List[int]]


# ------------------------------------------------------------------ validated frames
def frames_of(spans: Optional[Iterable[Sequence[int]]]) -> Set[int]:
    """The frame indices of inclusive ``[first, last]`` spans (a bare int is one frame)."""
    out: Set[int] = set()
    for span in spans or []:
        if isinstance(span, (int, np.integer)):
            out.add(int(span))
            continue
        a, b = (int(span[0]), int(span[-1]))
        if b < a:
            a, b = b, a
        out.update(range(a, b + 1))
    return out


def spans_of(frames: Iterable[int]) -> Spans:
    """Sorted frame indices -> merged inclusive spans (what the metadata stores)."""
    spans: Spans = []
    for t in sorted({int(f) for f in frames}):
        if spans and t == spans[-1][1] + 1:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return spans


def mark_validated(spans: Optional[Iterable[Sequence[int]]], first: int, last: Optional[int] = None,
                   checked: bool = True) -> Spans:
    """``spans`` with frames ``first..last`` marked checked (or unmarked)."""
    last = first if last is None else last
    if last < first:
        first, last = last, first
    if first < 0:
        raise ConfigError(f"frame {first} is not a frame index (>= 0)")
    frames = frames_of(spans)
    span = set(range(int(first), int(last) + 1))
    return spans_of(frames | span if checked else frames - span)


# ------------------------------------------------------------------ undo
class FrameUndo:
    """The old content of every frame a model run changed, to undo the run in
    one step. Only changed frames are kept, compressed (label maps compress
    to a few kB); past ``max_ram_mb`` they go to a temporary folder on disk,
    so undo data stays bounded for long videos. The first recorded content
    of a frame wins (the state before the run)."""

    def __init__(self, max_ram_mb: float = 64.0, folder: Optional[Union[str, os.PathLike]] = None) -> None:
        self.max_ram_bytes = int(max_ram_mb * 1e6)
        self._parent = Path(folder) if folder is not None else None
        self._folder: Optional[Path] = None
        self._ram: Dict[int, bytes] = {}
        self._disk: Dict[int, Path] = {}
        self._meta: Dict[int, Tuple[Tuple[int, ...], str]] = {}
        self.ram_bytes = 0

    def __contains__(self, frame: int) -> bool:
        return int(frame) in self._meta

    def __len__(self) -> int:
        return len(self._meta)

    @property
    def frames(self) -> List[int]:
        return sorted(self._meta)

    @property
    def disk_frames(self) -> List[int]:
        return sorted(self._disk)

    def record(self, frame: int, old: np.ndarray) -> None:
        frame = int(frame)
        if frame in self._meta:
            return
        arr = np.ascontiguousarray(old)
        blob = zlib.compress(arr.tobytes(), 1)
        self._meta[frame] = (tuple(arr.shape), arr.dtype.str)
        if self.ram_bytes + len(blob) <= self.max_ram_bytes:
            self._ram[frame] = blob
            self.ram_bytes += len(blob)
            return
        if self._folder is None:
            parent = self._parent
            if parent is None:
                from ..io.label_stack import label_stack_dir

                parent = label_stack_dir()
            parent.mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix="undo-", dir=parent))
        path = self._folder / f"{frame:07d}.zlib"
        path.write_bytes(blob)
        self._disk[frame] = path

    def old(self, frame: int) -> np.ndarray:
        """The recorded content of ``frame``."""
        shape, dtype = self._meta[int(frame)]
        blob = self._ram.get(int(frame))
        if blob is None:
            blob = self._disk[int(frame)].read_bytes()
        return np.frombuffer(zlib.decompress(blob), dtype=dtype).reshape(shape)

    def restore(self, array: Any) -> List[int]:
        """Write every recorded frame back into ``array``; returns the frames restored."""
        frames = self.frames
        for t in frames:
            array[t] = self.old(t)
        return frames

    def discard(self) -> None:
        """Forget the undo data (and delete its files)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._ram.clear()
        self._disk.clear()
        self._meta.clear()
        self.ram_bytes = 0

    def __del__(self) -> None:  # temporary files never outlive the record
        try:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
        except Exception:
            pass


class StackWriter:
    """Sink writing each frame's label map into an existing stack.

    ``protect``: frames never written (validated frames, the corrected
    frame). ``only``: object ids this run tracks; the pixels of other objects
    are kept (unless a tracked object now covers them). ``undo``: records the
    old content of each frame that changes. Frames whose content does not
    change are not written at all."""

    def __init__(self, array: Any, *, protect: Iterable[int] = (), only: Optional[Iterable[int]] = None,
                 undo: Optional[FrameUndo] = None) -> None:
        self.array = array
        self.protect = {int(t) for t in protect}
        self.only = None if only is None else np.asarray(sorted({int(i) for i in only}))
        self.undo = undo
        self.visited: Set[int] = set()
        self.changed: Set[int] = set()
        self.skipped: Set[int] = set()

    def __call__(self, result: FrameResult) -> None:
        t = int(result.frame_idx)
        if t in self.protect:
            self.skipped.add(t)
            return
        self.visited.add(t)
        new = result.label_map()
        old = np.asarray(self.array[t])
        if self.only is not None:
            keep = (new == 0) & ~np.isin(old, self.only)
            new = np.where(keep, old, new).astype(old.dtype, copy=False)
        if np.array_equal(old, new):
            return
        if self.undo is not None:
            self.undo.record(t, old)
        self.array[t] = new.astype(old.dtype, copy=False)
        self.changed.add(t)


class PngLabelStack:
    """A folder of per-frame PNG label maps (what ``surgseg track --out``
    writes: ``000123.png``) as a (T, H, W) stack: a missing frame reads as
    zeros; writing a frame replaces its PNG atomically."""

    def __init__(self, folder: Union[str, os.PathLike], num_frames: int, height: int, width: int,
                 digits: int = 6) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"label folder not found: {self.folder}")
        self.shape = (int(num_frames), int(height), int(width))
        self.dtype = np.dtype(np.uint8)
        self.digits = digits

    def __len__(self) -> int:
        return self.shape[0]

    def path(self, t: int) -> Path:
        return self.folder / f"{int(t):0{self.digits}d}.png"

    def __getitem__(self, t: int) -> np.ndarray:
        from ..io.labels_io import _read_png_mask

        path = self.path(t)
        if not path.is_file():
            return np.zeros(self.shape[1:], self.dtype)
        arr = _read_png_mask(path)
        if arr.shape != self.shape[1:] or arr.max(initial=0) > 255:
            raise ConfigError(f"{path}: a {arr.shape[-1]}x{arr.shape[0]} mask with values up to {arr.max()}, "
                              f"expected a {self.shape[2]}x{self.shape[1]} label map of object ids 0..255")
        return arr.astype(self.dtype, copy=False)

    def __setitem__(self, t: int, labels: np.ndarray) -> None:
        from PIL import Image

        from .outputs import _write_png

        _write_png(self.path(t), np.asarray(labels, self.dtype), Image)


# ------------------------------------------------------------------ re-propagation
def _span(direction: str, frame: int, first: int, last: int) -> Tuple[int, int]:
    if direction == "forward":
        return frame, last
    if direction == "backward":
        return first, frame
    if direction == "both":
        return first, last
    raise ConfigError(f"direction must be 'forward', 'backward' or 'both', got {direction!r}")


def repropagate(
    frames: Any,
    labels: Any,
    frame: int,
    *,
    direction: str = "forward",
    validated: Optional[Iterable[Sequence[int]]] = None,
    obj_ids: Optional[Iterable[int]] = None,
    frame_range: Optional[Tuple[int, int]] = None,
    model: Any = "surgseg_tiny",
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    device: Optional[str] = None,
    image_size: Optional[int] = None,
    precision: Optional[str] = None,
    seed: int = 0,
    undo: Optional[FrameUndo] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Dict[str, Any]:
    """Propagate the (corrected) masks of ``labels[frame]`` through the video
    with SAM2, writing into ``labels`` in place.

    ``frames``: video path or indexable (T, H, W, 3) frames; ``labels``:
    (T, H, W) label stack. ``direction``: forward (frames after ``frame``),
    backward (before) or both; frames on the other side are untouched.
    ``validated``: inclusive ``[first, last]`` spans (or frame indices) of
    checked frames: never written, and on the propagated side used as mask
    prompts. ``obj_ids``: objects to track (default: those on ``frame``); an
    object absent from ``frame`` gets an empty mask prompt there (absent),
    other objects' pixels are kept. ``frame_range``: inclusive limits.
    ``model``/``checkpoint``/``device``/``precision``: as ``track_video``. ``undo``: a
    :class:`FrameUndo` that receives the old content of each changed frame
    (also when cancelled: every written frame is complete).

    Returns ``{"frame", "direction", "frame_range", "obj_ids", "prompt_frames",
    "frames_visited", "frames_changed", "frames_protected", "random_weights",
    "provenance"}``.
    """
    from .engine import StreamingSAM2
    from .track import RANDOM_WEIGHTS_WARNING, _open_frames, resolve_net, run_provenance

    check_cancel(cancel)
    source, close = _open_frames(frames)
    try:
        n = len(source)
        shape = tuple(getattr(labels, "shape", ()))
        if len(shape) != 3 or shape[0] != n:
            raise ConfigError(f"labels must be a (T, H, W) stack with one map per video frame ({n}), got shape {shape}")
        if not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < n:
            raise ConfigError(f"frame {frame!r} is outside the video (0..{n - 1})")
        frame = int(frame)
        first, last = (0, n - 1) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
        if not 0 <= first <= frame <= last < n:
            raise ConfigError(f"frame range {first}..{last} must lie in the video (0..{n - 1}) and contain frame {frame}")
        lo, hi = _span(direction, frame, first, last)
        protected = frames_of(validated)
        anchor = np.array(labels[frame])  # a copy: the GUI may paint while we run
        present = sorted(int(v) for v in np.unique(anchor) if v != 0)
        ids = present if obj_ids is None else sorted({int(i) for i in obj_ids})
        if not ids:
            raise ConfigError(f"frame {frame} has no masks to propagate: paint the object(s) on it first")
        bad = [i for i in ids if not 1 <= i <= 255]
        if bad:
            raise ConfigError(f"object ids must be 1..255 (label values), got {bad}")

        net, random_weights = resolve_net(model, checkpoint, device=device, image_size=image_size, seed=seed)
        engine = StreamingSAM2(net, source, precision=precision)
        if tuple(shape[1:]) != (engine.video_height, engine.video_width):
            raise ConfigError(f"labels are {shape[2]}x{shape[1]} but the video frames are "
                              f"{engine.video_width}x{engine.video_height} (width x height)")
        prompt_frames = [frame] + sorted(t for t in protected if lo <= t <= hi and t != frame)
        total = len(prompt_frames) * len(ids)
        for i, t in enumerate(prompt_frames):
            labels_t = anchor if t == frame else np.asarray(labels[t])
            for j, obj in enumerate(ids):
                check_cancel(cancel)
                report(progress, i * len(ids) + j, None, f"mask prompt: frame {t}, object {obj}")
                engine.add_mask(t, obj, labels_t == obj)
        log.info("re-propagating object(s) %s from frame %d (%s, frames %d..%d), %d validated frame(s) as prompts",
                 ids, frame, direction, lo, hi, len(prompt_frames) - 1)
        if total and random_weights:
            log.warning(RANDOM_WEIGHTS_WARNING)

        writer = StackWriter(labels, protect=protected | {frame}, only=ids, undo=undo)
        status = "failed"
        try:
            engine.propagate(writer, direction=direction, start=frame, frame_range=(lo, hi),
                             progress=progress, cancel=cancel)
            status = "completed"
        except Cancelled:
            status = "cancelled"
            raise
        finally:
            prov = run_provenance(engine, random_weights)
            prov["repropagation"] = {
                "frame": frame, "direction": direction, "frame_range": [lo, hi], "obj_ids": ids,
                "prompt_frames": prompt_frames, "frames_changed": len(writer.changed), "status": status,
            }
            prov = _build_provenance(base=prov, result="masks", **source_fields(source, sorted(writer.changed)))
        return {
            "frame": frame,
            "direction": direction,
            "frame_range": [lo, hi],
            "obj_ids": ids,
            "prompt_frames": prompt_frames,
            "frames_visited": len(writer.visited),
            "frames_changed": sorted(writer.changed),
            "frames_protected": sorted(writer.skipped - {frame}),
            "random_weights": random_weights,
            "provenance": prov,
        }
    finally:
        if close is not None:
            close()
