"""Frame windows: the clip t-k .. t+k around a centre frame t.

Multi-frame methods (tool landmarks, ...) look at a short clip centred on the
frame they predict for. At the ends of a video the missing neighbours are the
edge frame repeated (frame 0 stands in for -1, -2, ...), so every window has
2k+1 frames and the centre is always index k.

Only the frames of a window are read (through the source's own indexing and
cache); :func:`iter_windows` slides over a range reading each frame once and
holds at most 2k+1 frames, never the whole video.
"""
from __future__ import annotations

import numbers
from collections import deque
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from ..errors import FrameIndexError, VideoError


def _check_k(k: Any) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 0:
        raise VideoError(f"frame window: k (frames either side) must be a whole number >= 0, got {k!r}")
    return int(k)


def _length(source: Any) -> int:
    try:
        n = len(source)
    except TypeError:
        raise VideoError(f"frame window: {type(source).__name__} has no length (give a FrameSource or an array)") from None
    if n < 1:
        raise VideoError("frame window: the source has no frames")
    return int(n)


def window_indices(t: int, k: int, n: int) -> np.ndarray:
    """Frame numbers t-k .. t+k clamped to 0 .. n-1 (edge repetition)."""
    k = _check_k(k)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
        raise FrameIndexError(f"frame window: centre frame must be a whole number, got {t!r}")
    if not 0 <= int(t) < int(n):
        raise FrameIndexError(f"frame window: centre frame {t} is outside 0..{int(n) - 1} (the source has {n} frames)")
    return np.clip(np.arange(int(t) - k, int(t) + k + 1), 0, int(n) - 1)


def frame_window(source: Any, t: int, k: int) -> np.ndarray:
    """(2k+1, H, W, 3) frames t-k .. t+k of ``source`` (a FrameSource or an
    array-like indexed by frame), edges padded by repeating the first/last
    frame. Reads each distinct frame once."""
    n = _length(source)
    idx = window_indices(t, k, n)
    unique, inverse = np.unique(idx, return_inverse=True)
    frames = [np.asarray(source[int(i)]) for i in unique]
    return np.stack([frames[j] for j in inverse])


def iter_windows(source: Any, k: int, start: int = 0, stop: Optional[int] = None,
                 ) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(t, window)`` for ``start <= t < stop`` in order, reading every
    frame once (a sliding buffer of 2k+1 frames). A FrameSource is read with
    its sequential reader (``iter_frames``), other sources by index."""
    k = _check_k(k)
    n = _length(source)
    stop = n if stop is None else stop
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise FrameIndexError(f"frame windows: {name} must be a whole number, got {value!r}")
    if not 0 <= start <= stop <= n:
        raise FrameIndexError(f"frame windows: range {start}..{stop} is outside 0..{n} (the source has {n} frames)")
    if start == stop:
        return
    first, last = max(0, start - k), min(n, stop + k)  # frames actually needed
    if hasattr(source, "iter_frames"):
        frames = (f for _, f in source.iter_frames(first, last))
    else:
        frames = (np.asarray(source[i]) for i in range(first, last))
    buf: deque = deque()  # holds frames buf_start .. buf_start + len(buf) - 1
    buf_start = first
    next_read = first
    for t in range(start, stop):
        lo, hi = max(0, t - k), min(n - 1, t + k)
        while next_read <= hi:
            buf.append(next(frames))
            next_read += 1
        while buf_start < lo:
            buf.popleft()
            buf_start += 1
        idx = window_indices(t, k, n) - buf_start
        yield t, np.stack([buf[int(i)] for i in idx])


__all__ = ["frame_window", "iter_windows", "window_indices"]
