"""Lazy reading of surgical videos, TIFF stacks and frame folders.

``open_video(path, ...)`` returns a :class:`FrameSource`: a read-only
(T, H, W, 3) uint8 array-like that decodes only the frames you index, with
keyframe-aware seeking, an LRU cache capped in bytes and optional prefetch.
``frame_window(src, t, k)`` / ``iter_windows(src, k)``: the clip t-k .. t+k
around a frame, edges padded by repetition (multi-frame methods).
"""
from .metadata import VideoMetadata
from .open import open_video
from .source import FrameSource
from .window import frame_window, iter_windows, window_indices

__all__ = ["open_video", "FrameSource", "VideoMetadata", "frame_window", "iter_windows", "window_indices"]
