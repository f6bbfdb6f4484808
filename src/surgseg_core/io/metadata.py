"""What a frame source knows about its file, as one plain dataclass.

``to_dict()`` gives JSON-able values so the napari plugin can put it in a
layer's ``metadata`` and exports can store it next to the labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import numpy as np


@dataclass
class VideoMetadata:
    path: str
    format: str  # "video" | "tiff" | "frames"
    codec: Optional[str]
    width: int  # after downscale
    height: int
    source_width: int
    source_height: int
    fps: Optional[float]  # None when the source has no timing (frame folders without fps=)
    duration: Optional[float]  # seconds of the whole source, None without fps
    n_frames: int  # selected frames (len of the source)
    source_n_frames: int
    start: int  # selection in source frame indices (stop exclusive)
    stop: int
    step: int
    downscale: float
    timestamps: np.ndarray = field(repr=False)  # seconds from the source's first frame, selected frames
    source_indices: np.ndarray = field(repr=False)
    variable_frame_rate: bool = False
    time_offset: float = 0.0  # presentation time of the first source frame in the file (s)
    #: A truncated/damaged file: the first source frame that cannot be read
    #: (frames before it are all readable; source_n_frames counts only those)
    #: and a message for the user naming the last good frame and time.
    damaged_from: Optional[int] = None
    damage: Optional[str] = None

    def time_of(self, source_frame: float) -> Optional[float]:
        """Seconds from the first source frame at a (possibly fractional) source frame index."""
        return source_time(source_frame, self.source_indices, self.timestamps, self.fps)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = [None if isinstance(v, float) and math.isnan(v) else v for v in value.tolist()]
            elif isinstance(value, (np.integer, np.floating)):
                value = value.item()
            if isinstance(value, float) and math.isnan(value):
                value = None
            out[f.name] = value
        return out


def source_time(source_frame: float, source_indices, timestamps, fps: Optional[float]) -> Optional[float]:
    """Seconds from a video's first frame at ``source_frame`` (a source frame
    index, fractional allowed), from the selected frames' timestamps
    (interpolated between them, extrapolated at ``fps`` outside); None when
    the source has no timing."""
    pos = np.asarray(source_indices, dtype=float)
    times = np.asarray([np.nan if t is None else t for t in timestamps], dtype=float)
    if not len(pos) or len(pos) != len(times) or not np.all(np.isfinite(times)):
        return None
    if pos[0] <= source_frame <= pos[-1]:
        return float(np.interp(source_frame, pos, times))
    if not fps:
        return None
    edge = 0 if source_frame < pos[0] else -1
    return float(times[edge] + (source_frame - pos[edge]) / fps)


def format_time(seconds: Optional[float]) -> str:
    """``mm:ss.ff`` (``h:mm:ss.ff`` from one hour; ff = hundredths), ``--:--.--`` without a time."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--.--"
    sign = "-" if seconds < 0 else ""
    hundredths = int(round(abs(seconds) * 100))
    minutes, rest = divmod(hundredths, 6000)
    hours, minutes = divmod(minutes, 60)
    head = f"{hours}:{minutes:02d}" if hours else f"{minutes:02d}"
    return f"{sign}{head}:{rest // 100:02d}.{rest % 100:02d}"
