"""Build napari LayerData tuples from core objects (shared by the reader, the
video loader widget and the sample data, so a video looks the same whichever
way it was opened)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

#: Axis names of a video layer (the RGB channel axis is not named in napari).
VIDEO_AXES = ("t", "y", "x")


def video_metadata(source: Any) -> dict:
    """Layer metadata of a FrameSource: every VideoMetadata field flat
    (fps, duration, codec, timestamps, ...) plus ``source_path``."""
    meta = getattr(source, "metadata", None)
    if meta is None:
        return {}
    md = dict(meta.to_dict()) if hasattr(meta, "to_dict") else dict(vars(meta))
    md["source_path"] = str(getattr(meta, "path", md.get("path", "")))
    # JSON-friendly: napari may save metadata, and numpy scalars/arrays surprise users.
    for key, value in list(md.items()):
        if isinstance(value, np.ndarray):
            md[key] = value.tolist()
        elif isinstance(value, np.generic):
            md[key] = value.item()
        elif isinstance(value, Path):
            md[key] = str(value)
    return md


def video_layer_data(source: Any, name: Optional[str] = None) -> tuple:
    """``(source, kwargs, "image")`` for a lazy (T, H, W, 3) FrameSource.

    The source itself is the layer data: napari reads one frame when the time
    slider moves. Contrast limits are fixed to the uint8 range so napari never
    scans the video to guess them.
    """
    md = video_metadata(source)
    if name is None:
        path = Path(md.get("source_path") or "video")
        name = path.stem if path.suffix else path.name
    kwargs = {
        "name": name,
        "rgb": True,
        "axis_labels": VIDEO_AXES,
        "contrast_limits": (0, 255),
        "metadata": md,
    }
    return (source, kwargs, "image")


def labels_layer_data(labels: Any, name: str, metadata: Optional[dict] = None) -> tuple:
    """``(array, kwargs, "labels")``; labels are loaded into memory because
    napari paints into them."""
    data = np.asarray(labels)
    axes = VIDEO_AXES if data.ndim == 3 else VIDEO_AXES[1:]
    return (data, {"name": name, "axis_labels": axes, "metadata": dict(metadata or {})}, "labels")


def points_layer_data(points: Any, name: str, features: Optional[dict] = None, **kwargs: Any) -> tuple:
    """``(array, kwargs, "points")`` from (N, 3) (t, y, x) or (N, 2) (y, x)."""
    data = np.asarray(points, dtype=float)
    if data.ndim != 2:
        data = data.reshape(0, 3)
    axes = VIDEO_AXES if data.shape[1] == 3 else VIDEO_AXES[1:]
    layer_kwargs = {"name": name, "axis_labels": axes, "size": 8, "face_color": "yellow"}
    if features:
        layer_kwargs["features"] = {k: np.asarray(v) for k, v in features.items()}
    layer_kwargs.update(kwargs)
    return (data, layer_kwargs, "points")
