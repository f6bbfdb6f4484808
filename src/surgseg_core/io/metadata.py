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
