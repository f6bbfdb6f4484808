"""Video layers and where things lie on them.

napari LayerData tuples from core objects (shared by the reader, the video
loader widget and the sample data, so a video looks the same whichever way
it was opened), the placement (scale/translate) of a ranged or downscaled
video, and conversions between a layer's frames and the time slider, all
through world coordinates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

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


def video_placement(md: dict) -> dict:
    """``scale``/``translate`` that put a frame range / stride / downscale
    selection where it belongs in the full video: time in source frames
    (frame i of the layer is source frame ``start + i * step``), space in
    source pixels (a downscaled pixel covers ``downscale`` source pixels; its
    centre is half a cell in). A full-size, full-length layer gets the
    identity, so layers of the same video line up however they were opened."""
    start, step = float(md.get("start") or 0), float(md.get("step") or 1)
    sy = sx = 1.0
    if md.get("height") and md.get("source_height"):
        sy = md["source_height"] / md["height"]
        sx = md["source_width"] / md["width"]
    return {"scale": (step, sy, sx), "translate": (start, (sy - 1) / 2, (sx - 1) / 2)}


def placement_of(layer: Any, ndim: int = 3) -> dict:
    """``scale``/``translate`` of a layer's last ``ndim`` axes ((t, y, x) or
    (y, x)), for result layers that must lie on it."""
    return {"scale": tuple(np.asarray(layer.scale, float)[-ndim:]),
            "translate": tuple(np.asarray(layer.translate, float)[-ndim:])}


def source_video_of(layer: Any) -> Optional[str]:
    """The file a layer's video came from (``metadata["source_path"]``), or None."""
    meta = getattr(layer, "metadata", {}) or {}
    path = meta.get("source_path") or getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def video_key(layer: Any) -> str:
    """What identifies a video across layers: its file, else the layer name."""
    return source_video_of(layer) or layer.name


def video_shape(layer: Any) -> Tuple[int, int, int]:
    """(T, H, W) of a video Image layer (RGB or grey); SurgsegError otherwise."""
    from surgseg_core.errors import SurgsegError

    shape = tuple(layer.data.shape)
    if layer.rgb and len(shape) == 4:
        return shape[0], shape[1], shape[2]
    if not layer.rgb and len(shape) == 3:
        return shape
    raise SurgsegError(f"layer {layer.name!r} with shape {shape} is not a video (T, H, W[, 3])")


def frame_of(viewer: Any, layer: Any) -> int:
    """The frame of ``layer`` (its own index along t) shown at the time
    slider's position, through world coordinates (layers may be ranged,
    strided or shifted)."""
    n_dims = layer.ndim
    point = np.asarray(viewer.dims.point, float)[-n_dims:]
    t = float(np.asarray(layer.world_to_data(point))[0])
    n = int(layer.data.shape[0]) if hasattr(layer.data, "shape") else 1
    return int(min(max(round(t), 0), max(n - 1, 0)))


def points_on(points: Any, layer: Any) -> np.ndarray:
    """(N, 3) (t, y, x) coordinates of a Points layer's points in ``layer``'s
    frames and pixels, through world coordinates (either may be ranged,
    strided, downscaled or shifted)."""
    data = np.asarray(points.data, float)
    if not len(data):
        return data.reshape(0, 3)
    return np.array([np.asarray(layer.world_to_data(points.data_to_world(p)))[-3:] for p in data])


def show_frame(viewer: Any, layer: Any, frame: int) -> None:
    """Move the time slider to ``layer``'s frame ``frame`` (world coordinates)."""
    data_point = np.zeros(layer.ndim)
    data_point[0] = frame
    world_t = float(np.asarray(layer.data_to_world(data_point))[0])
    axis = viewer.dims.ndim - layer.ndim
    viewer.dims.set_point(axis, world_t)


#: Frames a video opened for the viewer decodes ahead, on a background thread, in
#: the direction of play: stepping or playing then finds the next frame decoded
#: (benchmarks/playback.py); within the frame cache's cap (FrameSource._ahead).
PLAYBACK_PREFETCH = 8


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
        **video_placement(md),
    }
    return (source, kwargs, "image")


def announce_video(source: Any, viewer: Any = None) -> None:
    """What opening a video does besides the layer, however it was opened
    (reader, widget, sample): warn when the file is damaged (where the
    readable part ends), show the video time beside the time slider, autosave
    the layers the user adds to annotate it, and offer to restore the layers
    autosaved for it in an earlier session (napari killed or closed)."""
    from napari.utils.notifications import show_warning

    from ..._autosave import offer_restore, watch_new_layers
    from ..._time_display import attach_time_display

    meta = getattr(source, "metadata", None)
    if getattr(meta, "damage", None):
        show_warning(f"{Path(meta.path).name}: {meta.damage}")
    if viewer is None:
        from napari import current_viewer

        viewer = current_viewer()
    attach_time_display(viewer)
    path = str(meta.path) if getattr(meta, "path", None) else None
    if path:
        from surgseg_core.provenance import hash_in_background

        hash_in_background(path)  # saved results record its hash: read it now, not at the first save
    if viewer is not None:
        watch_new_layers(viewer)
        offer_restore(viewer, path)


def labels_layer_data(labels: Any, name: str, metadata: Optional[dict] = None) -> tuple:
    """``(array, kwargs, "labels")``: a writable array napari paints into
    (a memory-mapped stack stays one: autosave and the reader rely on it)."""
    data = np.asanyarray(labels)
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
