"""The video time (mm:ss.ff) of the time slider's position, shown in the
viewer's text overlay (bottom left, just above the slider).

napari's slider shows only an index; surgeons and annotation protocols talk
in times. The time comes from the video layer's own timestamps (layer
metadata from ``video_layer_data``), so variable frame rates and ranged or
strided layers show the true time in the source video.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np

from surgseg_core.io.metadata import format_time, source_time

# One display per viewer; weak, so a closed viewer is not kept alive.
_DISPLAYS: "weakref.WeakKeyDictionary[Any, TimeDisplay]" = weakref.WeakKeyDictionary()


def is_video_layer(layer: Any) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return "timestamps" in md and "source_indices" in md and getattr(layer, "ndim", 0) >= 3


def attach_time_display(viewer: Any) -> Optional["TimeDisplay"]:
    """Show the video time in ``viewer`` (idempotent); None without a viewer."""
    if viewer is None:
        return None
    viewer = getattr(viewer, "__wrapped__", viewer)  # widgets get napari's public-only proxy
    display = _DISPLAYS.get(viewer)
    if display is None:
        display = _DISPLAYS[viewer] = TimeDisplay(viewer)
    display.update()
    return display


def text_overlay(viewer: Any) -> Any:
    """The viewer's text overlay (napari 0.9 moved it to ``canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None:
        return canvas.overlays["text"]
    return viewer.text_overlay


class TimeDisplay:
    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)
        self._shown = False
        self._times: tuple = (None, None, None)  # (timestamps list, source indices, seconds) of the last layer
        viewer.dims.events.point.connect(self.update)
        viewer.layers.events.inserted.connect(self.update)
        viewer.layers.events.removed.connect(self.update)
        viewer.layers.selection.events.active.connect(self.update)

    def video_layer(self) -> Any:
        """The selected layer if it is a video, else the topmost visible video."""
        viewer = self._viewer()
        if viewer is None:
            return None
        active = viewer.layers.selection.active
        if active is not None and is_video_layer(active):
            return active
        for layer in reversed(list(viewer.layers)):
            if layer.visible and is_video_layer(layer):
                return layer
        return None

    def text(self) -> Optional[str]:
        """What the overlay shows now, or None without a video layer."""
        viewer = self._viewer()
        layer = self.video_layer()
        if viewer is None or layer is None:
            return None
        md = layer.metadata
        point = np.asarray(viewer.dims.point, float)[-layer.ndim:]
        t_data = float(np.asarray(layer.world_to_data(point))[0])
        t_data = min(max(t_data, 0.0), len(md["source_indices"]) - 1.0)
        source_frame = float(md.get("start") or 0) + float(md.get("step") or 1) * t_data
        seconds = source_time(source_frame, *self._arrays(md), md.get("fps"))
        return f"{format_time(seconds)}  (frame {int(round(source_frame))} of {layer.name})"

    def _arrays(self, md: dict) -> tuple:
        """The layer's source indices and timestamps as arrays, converted once
        per layer (an hour of video has ~90 000; the slider moves often)."""
        if self._times[0] is not md["timestamps"]:
            times = np.array([np.nan if t is None else t for t in md["timestamps"]], float)
            self._times = (md["timestamps"], np.asarray(md["source_indices"], float), times)
        return self._times[1], self._times[2]

    def update(self, event: Any = None) -> None:
        viewer = self._viewer()
        if viewer is None:
            return
        text = self.text()
        overlay = text_overlay(viewer)
        if text is None:
            if self._shown:  # hide only what we showed
                overlay.visible = False
                overlay.text = ""
                self._shown = False
            return
        if not self._shown:
            overlay.position = "bottom_left"
            overlay.visible = True
            self._shown = True
        overlay.text = text
