"""Which frames the user edited in a layer: the record behind "export what
was edited" (corrections widget).

Brush, fill and eraser strokes of a Labels layer and added, moved or removed
points of a Points layer are recorded, as sorted frame indices, in
``layer.metadata["edited_frames"]`` (saved with the layer's autosave).
Writes by a model (tracking, re-propagation) are not edits: they go straight
into the array without napari's paint events.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable, List, Optional

import numpy as np
from napari.layers import Labels, Points

EDITED_KEY = "edited_frames"

_RECORDING: "weakref.WeakSet[Any]" = weakref.WeakSet()


def edited_frames(layer) -> Optional[List[int]]:
    """The layer's recorded edited frames, or None when it has no edit record."""
    value = (getattr(layer, "metadata", None) or {}).get(EDITED_KEY)
    return None if value is None else [int(t) for t in value]


def _add(layer, frames: Iterable[int]) -> None:
    frames = {int(t) for t in frames}
    if frames:
        layer.metadata[EDITED_KEY] = sorted(set(edited_frames(layer) or []) | frames)


def _frames_of_atom(atom) -> Iterable[int]:
    key = getattr(atom, "slice_key", None)  # napari's masked paint atom: a bounding box
    if key is not None:
        first = key[0]
        if isinstance(first, slice):
            return range(first.start or 0, first.stop if first.stop is not None else (first.start or 0) + 1)
        return [int(first)]
    indices = atom[0]  # (indices, old values, new values)
    return np.unique(np.asarray(indices[0]).reshape(-1)).tolist()


def _is_empty(layer) -> bool:
    """Known to hold nothing yet (so every later edit is seen); a large or
    memory-mapped stack is not scanned and counts as unknown."""
    if isinstance(layer, Points):
        return len(layer.data) == 0
    data = layer.data
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap) and data.nbytes <= 64e6:
        return not data.any()
    return False


def record_edits(layer, *, fresh: Optional[bool] = None) -> bool:
    """Start recording ``layer``'s edited frames (idempotent); returns whether
    it is recorded. Only a layer whose every edit will be seen is recorded:
    ``fresh`` (a widget just made it), or one found empty. A layer with
    earlier, unknown edits keeps no record (exports then say why each frame
    is included)."""
    if layer in _RECORDING:
        return True
    if getattr(layer, "ndim", 0) < 3 or not isinstance(layer, (Labels, Points)):
        return False
    if EDITED_KEY not in (layer.metadata or {}) and not (fresh if fresh is not None else _is_empty(layer)):
        return False
    if isinstance(layer, Labels):

        def on_paint(event) -> None:
            _add(layer, (t for atom in (event.value or []) for t in _frames_of_atom(atom)))

        layer.events.paint.connect(on_paint)
    elif isinstance(layer, Points):
        pending: dict = {}

        def on_data(event) -> None:
            action = str(getattr(event, "action", ""))
            indices = [int(i) for i in (getattr(event, "data_indices", ()) or ())]
            data = np.asarray(layer.data)
            if not len(data):
                frames = []
            else:
                frames = [int(round(data[i, 0])) for i in indices if -len(data) <= i < len(data)]
            if action.endswith("removing") or action.endswith("changing"):
                pending["frames"] = frames  # where the points were before the change
            elif action.endswith(("added", "changed", "removed")):
                _add(layer, frames + pending.pop("frames", []))

        layer.events.data.connect(on_data)
    layer.metadata.setdefault(EDITED_KEY, [])
    _RECORDING.add(layer)
    return True


def record_viewer_edits(viewer) -> None:
    """Record edits of every Labels and Points layer of ``viewer``, now and
    as layers are added."""
    for layer in viewer.layers:
        record_edits(layer)

    def on_inserted(event) -> None:
        record_edits(event.value)

    viewer.layers.events.inserted.connect(on_inserted)
