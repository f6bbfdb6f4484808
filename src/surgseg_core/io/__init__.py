"""Lazy reading of surgical videos, TIFF stacks and frame folders.

``open_video(path, ...)`` returns a :class:`FrameSource`: a read-only
(T, H, W, 3) uint8 array-like that decodes only the frames you index, with
keyframe-aware seeking, an LRU cache capped in bytes and optional prefetch.
"""
from .metadata import VideoMetadata
from .open import open_video
from .source import FrameSource

__all__ = ["open_video", "FrameSource", "VideoMetadata"]
