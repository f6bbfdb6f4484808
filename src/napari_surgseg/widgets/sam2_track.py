"""Dock widget "Track with SAM2": clicks and boxes on a video -> masks on
every frame (core: :func:`surgseg_core.sam2_engine.track.track_video`, also
``surgseg track``). Built on the method-widget base (``widgets.base``).

Prompts are a Points layer with features ``obj_id`` and ``positive``, and/or
a Shapes layer of rectangles (boxes) with feature ``obj_id``; the object id
spin box and the positive/negative toggle set the layers'
``feature_defaults``, so each new click or box gets them. Tracking runs in a
worker that writes each frame's label map into the array behind a Labels
layer (a sparse on-disk stack, created instantly); tracking the same video
again reuses its result layer; the widget refreshes the layer on the GUI
thread as progress arrives.

Corrections propagate (core: :func:`surgseg_core.sam2_engine.refine.repropagate`):
after painting on a frame, "Re-propagate from this frame" makes its masks
SAM2 mask prompts and tracks on from there, in the chosen direction, into
the same layer. Checked (validated) frames, kept in the layer's metadata
(``validated_frames``, autosaved), are never overwritten and serve as
prompts. Every model run into a layer can be undone as one step.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

from magicgui.widgets import PushButton
from napari.layers import Labels
from napari.utils.notifications import show_error

from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.outputs import ArrayWriter
from surgseg_core.sam2_engine.session import ClickSession
from surgseg_core.sam2_engine.track import load_tracking_model, preview_frame

from .base import ModelCache, TrackingWidget, device_value, frame_of
from .base.tracking import BOX_COLOR, prompts_from_boxes, prompts_from_layer  # noqa: F401  (were defined here)

TITLE = "Track with SAM2"
RANDOM_TINY = "random tiny (testing)"
STATE_KEY = "sam2_tracking"  # the widget's own state of a masks layer (status, prompts, video, objects)


def _weights_item(entry) -> Tuple[str, Tuple[str, Optional[str]]]:
    """(label, (model, checkpoint)) of a registry entry."""
    if entry.source == "official":
        return (entry.name if entry.present else f"{entry.name} (not downloaded)"), (entry.name, entry.name)
    return f"{entry.name} (fine-tuned)", (entry.name, None)


def _preview_job(session: ClickSession, load: Callable, frames, prompts, *, frame_range, sink, progress=None,
                 cancel=None, **_):
    """Worker body of a preview: the session keeps the engine (and the frames
    it encoded) across previews, so a second click on a frame only decodes."""
    return preview_frame(frames, prompts, frame_range[0], model=load(), session=session, sink=sink, cancel=cancel)


def _model(cache: ModelCache, model: str, checkpoint: Optional[str], device: Optional[str]):
    """The model built once per (model, checkpoint, device): previews and
    tracking runs then skip rebuilding and reloading the weights."""
    return cache.get((model, checkpoint, device), lambda: load_tracking_model(model, checkpoint, device=device))


class Sam2TrackWidget(TrackingWidget):
    METHOD = "sam2"
    TITLE = TITLE
    STATE_KEY = STATE_KEY
    RESULT_NAME = "SAM2 masks"
    LAYER_PREFIX = "SAM2"
    TRACK_DESCRIPTION = "Tracking with SAM2"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.preview_layer: Optional[Labels] = None
        self._click_session = ClickSession()

        self.video_combo = self.video_picker()
        prompt_controls = self.prompt_controls(boxes=True)
        self.obj_spin.tooltip = "label value of the object the next clicks and boxes belong to"
        # plain SAM2 weights only (variant None): variants have their own widgets
        self.model_combo = self.weights_picker("Model", variant=None, item=_weights_item,
                                               after=[(RANDOM_TINY, (TINY_CONFIG, None))])
        self.tracking_controls()
        self.preview_button = PushButton(text="Preview current frame")
        self.preview_button.tooltip = ("segment only the frame shown, from its own clicks (no tracking): "
                                       "check the clicks first")
        self.layout(prompt_controls, self.model_combo, [self.preview_button])
        self.runs = self.run_control([self.preview_button])
        self.preview_button.changed.connect(self.preview)

    def model_loader(self) -> Callable[[], Any]:
        model, checkpoint = self.model_combo.value
        return functools.partial(_model, self.models, model, checkpoint, device_value(self.device_combo.value))

    # ------------------------------------------------------------------ preview
    def preview(self, *_: Any) -> None:
        """Segment the frame shown from the clicks and boxes on that frame
        only, into a "SAM2 preview" layer (reused): a quick check before tracking."""
        inputs = self._inputs()
        if inputs is None:
            return
        video, prompts, (n, h, w) = inputs
        t = frame_of(self.viewer, video)  # the video's own frame, via world coordinates (ranged layers)
        here = [p for p in prompts if int(p["frame"]) == t]
        if not here:
            frames = sorted({int(p["frame"]) for p in prompts})
            show_error(f"{TITLE}: no clicks on frame {t} (clicks are on frame(s) {frames}): go to one of them")
            return
        layer = self.preview_layer
        created = layer is None or layer not in self.viewer.layers or layer.data.shape != (n, h, w)
        if created:
            layer = self.preview_layer = self._new_labels(video, (n, h, w), f"{video.name} SAM2 preview",
                                                          "preview", here)
        layer.data[t] = 0
        layer.metadata[STATE_KEY] = {"status": "preview", "prompts": here}
        self.status.value = f"segmenting frame {t}…"

        def done(summary: dict) -> None:
            self.last_summary = summary
            self.set_provenance(layer, summary["provenance"])
            layer.refresh()
            note = " (RANDOM weights: not a segmentation)" if summary["random_weights"] else ""
            self.status.value = f"preview of frame {t}: object(s) {summary['obj_ids']}{note}"

        self._start(functools.partial(_preview_job, self._click_session), (video.data, here),
                    {"frame_range": (t, t), "sink": ArrayWriter(layer.data)},
                    layer, done, "SAM2 preview", created)

    def _discard(self, layer: Labels) -> None:
        super()._discard(layer)
        self.preview_layer = None if self.preview_layer is layer else self.preview_layer
