"""Result layers: placed on their source, autosaved, out of the user's way.

A result layer (Labels, Points or Shapes) takes the scale and translate of
the layer it was computed from (:func:`~.layers.placement_of`), so a result of
a ranged, strided or downscaled video lies on the video. It is autosaved
beside the source video (``_autosave.watch_layer``) and its brush / point
edits are recorded (``_edits.record_edits``: corrections export the edited
frames).

napari selects every layer it adds, so a result layer created when a run
starts took the selection from the prompt (or other) layer the user was
clicking in, and a failed run left it behind, empty and selected: the next
click landed in it. Result layers are added with :func:`add_result_layer`
(the selection stays as it was) and what a failed run created is removed
with :func:`discard_layers`.

What produced a layer (model, weights, settings) is kept under one metadata
key, :data:`PROVENANCE_KEY`, with the method's name (:func:`set_provenance`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from .layers import VIDEO_AXES, placement_of, source_video_of

#: the metadata key of a result layer's provenance: ``{"method": name, ...}``
PROVENANCE_KEY = "provenance"


@contextmanager
def keep_selection(viewer) -> Iterator[None]:
    """Restore the layer selection (and so the active layer) on exit."""
    selection = viewer.layers.selection
    before = list(selection)
    try:
        yield
    finally:
        kept = [layer for layer in before if layer in viewer.layers]
        if set(selection) != set(kept):
            selection.clear()
            selection.update(kept)  # one selected layer becomes the active one again


def add_result_layer(viewer, layer):
    """``viewer.add_layer(layer)`` without changing the selected layer."""
    with keep_selection(viewer):
        return viewer.add_layer(layer)


def discard_layers(viewer, layers: Iterable) -> None:
    """Remove the layers a failed run created (those still in the viewer)
    and stop autosaving them."""
    from ..._autosave import unwatch_layer

    with keep_selection(viewer):
        for layer in layers:
            if layer is None:
                continue
            unwatch_layer(layer)
            if layer in viewer.layers:
                viewer.layers.remove(layer)


def set_provenance(layer, method: str, info: Mapping[str, Any]) -> dict:
    """Record what produced ``layer``: ``metadata[PROVENANCE_KEY]`` becomes
    ``{"method": method, **info}`` (replacing an older run's)."""
    prov = {"method": method, **dict(info)}
    layer.metadata[PROVENANCE_KEY] = prov
    return prov


def provenance_of(layer) -> dict:
    """A layer's provenance (empty when no method produced it)."""
    return dict((getattr(layer, "metadata", None) or {}).get(PROVENANCE_KEY) or {})


def saved_provenance(layer, result: str, *, frames: Optional[Iterable[int]] = None, source_frames: bool = False,
                     video=None, **extra: Any) -> dict:
    """What a file saved from ``layer`` records: :func:`provenance_of` (the
    model run) plus the shared fields of
    :func:`surgseg_core.provenance.build_provenance`: the layer's video
    (``metadata["source_video"]``, else ``video``'s file) and its hash, and
    ``frames`` (the layer's own frame indices, placed on the source video
    through the layer's t scale / translate; ``source_frames``: already
    source frames)."""
    from surgseg_core.provenance import build_provenance

    meta = getattr(layer, "metadata", None) or {}
    base = provenance_of(layer)
    source = meta.get("source_video") or (source_video_of(video) if video is not None else None)
    timed = getattr(layer, "ndim", 2) >= 3
    start = float(np.asarray(layer.translate, float)[-3]) if timed else 0.0
    step = float(np.asarray(layer.scale, float)[-3]) if timed else 1.0
    if frames is not None and not source_frames:
        frames = [start + int(t) * step for t in frames]
    return build_provenance(base=base, result=result, source=source, frames=frames,
                            frame_map={"start": start, "step": step} if timed else None, layer=layer.name, **extra)


def _placed(source, ndim: int) -> dict:
    return placement_of(source, ndim) if source is not None else {}


def _register(viewer, layer, source, *, select: bool, record: bool):
    from ..._autosave import watch_layer
    from ..._edits import record_edits

    if select:
        viewer.add_layer(layer)
    else:
        add_result_layer(viewer, layer)
    watch_layer(layer, source_video_of(source) if source is not None else None)
    if record:
        record_edits(layer, fresh=True)  # edits, not model output, are what corrections export
    return layer


def add_labels_result(viewer, source, data, name: str, *, metadata: Optional[dict] = None, select: bool = False,
                      record: bool = True, **kwargs: Any):
    """A Labels layer over ``data`` ((T, H, W) or (H, W)) placed on ``source``,
    added without taking the selection (``select``: make it the active
    layer), autosaved, its edits recorded."""
    from napari.layers import Labels

    ndim = np.ndim(data) if not hasattr(data, "ndim") else data.ndim
    layer = Labels(data, name=name, axis_labels=VIDEO_AXES[-ndim:], metadata=dict(metadata or {}),
                   **_placed(source, ndim), **kwargs)
    return _register(viewer, layer, source, select=select, record=record)


def add_points_result(viewer, source, name: str, *, ndim: int = 3, features: Optional[Mapping] = None,
                      data=None, select: bool = False, record: bool = True, **kwargs: Any):
    """A Points layer ((t, y, x) or (y, x)) placed on ``source``, with
    ``features`` columns (empty arrays give the columns' types)."""
    from napari.layers import Points

    pts = np.zeros((0, ndim)) if data is None else np.asarray(data, float)
    feats = {k: np.asarray(v) for k, v in (features or {}).items()}
    layer = Points(pts, ndim=ndim, name=name, features=feats, axis_labels=VIDEO_AXES[-ndim:],
                   **_placed(source, ndim), **kwargs)
    return _register(viewer, layer, source, select=select, record=record)


def add_shapes_result(viewer, source, name: str, *, ndim: int = 3, features: Optional[Mapping] = None,
                      select: bool = False, record: bool = False, **kwargs: Any):
    """An empty Shapes layer (paths, rectangles, ...) placed on ``source``,
    with ``features`` columns."""
    from napari.layers import Shapes

    layer = Shapes(name=name, ndim=ndim, axis_labels=VIDEO_AXES[-ndim:], **_placed(source, ndim), **kwargs)
    if features:
        layer.features = {k: np.asarray(v) for k, v in features.items()}
    return _register(viewer, layer, source, select=select, record=record)
