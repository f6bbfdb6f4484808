"""One base for method widgets (Track with SAM2, Liver landmarks and the
method widgets to come).

* :mod:`.widget`: :class:`MethodWidget`, the base class (method spec, status
  line, pickers, result layers, provenance, model cache);
* :mod:`.pickers`: video / layer / weights / device pickers and the one
  frame-range convention (:class:`FrameRange`: First..Last, both included,
  Last -1 = to the end);
* :mod:`.run`: :class:`RunControl` (worker with progress and cancel, buttons
  while it runs) and :class:`ModelCache`;
* :mod:`.results`: result Labels / Points / Shapes layers placed with the
  source layer's scale and translate, autosaved, added without taking the
  selection; provenance under :data:`PROVENANCE_KEY`;
* :mod:`.layers`: video layers (reader / sample data / loader), placement,
  frames and points through world coordinates;
* :mod:`.status`: the status line that never widens the dock;
* :mod:`.tracking`: :class:`TrackingWidget`, the base of widgets that track
  objects into a masks layer the user corrects (Track with SAM2, Clicks
  (RP-SAM2), Anatomy (F2PASeg): click / box prompts, track, re-propagate,
  checked frames, undo of a run, cancel).

Class names, colours and the kind of result come from the method's
``MethodSpec`` (``class_names``, ``class_colours``, ``result_kind``).
"""
from .layers import (
    frame_of, placement_of, points_on, show_frame, source_video_of, video_key, video_placement, video_shape,
)
from .pickers import (
    ANY_VARIANT, FrameRange, connect_layer_refresh, device_choices, device_value, layer_choices, resolve_range,
    weights_choices,
)
from .results import (
    PROVENANCE_KEY, add_labels_result, add_points_result, add_result_layer, add_shapes_result, discard_layers,
    keep_selection, provenance_of, saved_provenance, set_provenance,
)
from .run import ModelCache, RunControl
from .status import StatusLabel
from .tracking import TrackingWidget
from .widget import MethodWidget, class_colormap, rgba

__all__ = [
    "ANY_VARIANT", "FrameRange", "MethodWidget", "ModelCache", "PROVENANCE_KEY", "RunControl", "StatusLabel",
    "TrackingWidget",
    "add_labels_result", "add_points_result", "add_result_layer", "add_shapes_result", "class_colormap",
    "connect_layer_refresh", "device_choices", "device_value", "discard_layers", "frame_of", "keep_selection",
    "layer_choices", "placement_of", "points_on", "provenance_of", "resolve_range", "rgba", "saved_provenance",
    "set_provenance", "show_frame", "source_video_of", "video_key", "video_placement", "video_shape", "weights_choices",
]
