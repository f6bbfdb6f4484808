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

import numpy as np
from magicgui.widgets import PushButton
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error

from surgseg_core.errors import SurgsegError
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.outputs import ArrayWriter
from surgseg_core.sam2_engine.refine import repropagate
from surgseg_core.sam2_engine.session import ClickSession
from surgseg_core.sam2_engine.track import (
    load_tracking_model, normalize_prompts, preview_frame, track_video,
)

from .base import ModelCache, TrackingWidget, device_value, frame_of, video_shape
from .base.tracking import prompts_from_layer  # noqa: F401  (was defined here)

TITLE = "Track with SAM2"
RANDOM_TINY = "random tiny (testing)"
BOX_COLOR = "yellow"
STATE_KEY = "sam2_tracking"  # the widget's own state of a masks layer (status, prompts, video, objects)


def _weights_item(entry) -> Tuple[str, Tuple[str, Optional[str]]]:
    """(label, (model, checkpoint)) of a registry entry."""
    if entry.source == "official":
        return (entry.name if entry.present else f"{entry.name} (not downloaded)"), (entry.name, entry.name)
    return f"{entry.name} (fine-tuned)", (entry.name, None)


def prompts_from_boxes(shapes: Shapes, video: Image) -> list:
    """Box prompts (video pixel coordinates) from a Shapes layer's
    rectangles, each on one frame, with the ``obj_id`` feature (default 1);
    through world coordinates like the points. Other shapes are ignored."""
    out = []
    ids = shapes.features["obj_id"] if "obj_id" in shapes.features else None
    for k, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind != "rectangle":
            continue
        verts = np.asarray(verts, float)
        if verts.shape[1] != 3:
            raise SurgsegError(f"box layer {shapes.name!r} has 2-D rectangles: boxes need a frame; "
                               "use 'New box layer'")
        tyx = np.array([np.asarray(video.world_to_data(shapes.data_to_world(v)))[-3:] for v in verts])
        t = np.round(tyx[:, 0])
        if not np.all(t == t[0]):
            raise SurgsegError(f"box {k} of layer {shapes.name!r} spans several frames: draw each box on one frame")
        obj = 1 if ids is None else ids.iloc[k]
        if obj is None or (isinstance(obj, float) and not np.isfinite(obj)):
            raise SurgsegError(f"box {k} of layer {shapes.name!r} has no object id")
        (y0, x0), (y1, x1) = tyx[:, 1:].min(0), tyx[:, 1:].max(0)
        out.append({"frame": int(t[0]), "obj_id": int(obj), "box": [float(x0), float(y0), float(x1), float(y1)]})
    return out


def _track_job(load: Callable, frames, prompts, *, progress=None, cancel=None, **kwargs):
    """Worker body: ``track_video`` with the cached model."""
    return track_video(frames, prompts, model=load(), progress=progress, cancel=cancel, **kwargs)


def _preview_job(session: ClickSession, load: Callable, frames, prompts, *, frame_range, sink, progress=None,
                 cancel=None, **_):
    """Worker body of a preview: the session keeps the engine (and the frames
    it encoded) across previews, so a second click on a frame only decodes."""
    return preview_frame(frames, prompts, frame_range[0], model=load(), session=session, sink=sink, cancel=cancel)


def _refine_job(load: Callable, frames, labels, frame: int, *, progress=None, cancel=None, **kwargs):
    """Worker body: ``repropagate`` with the cached model."""
    return repropagate(frames, labels, frame, model=load(), progress=progress, cancel=cancel, **kwargs)


def _model(cache: ModelCache, model: str, checkpoint: Optional[str], device: Optional[str]):
    """The model built once per (model, checkpoint, device): previews and
    tracking runs then skip rebuilding and reloading the weights."""
    return cache.get((model, checkpoint, device), lambda: load_tracking_model(model, checkpoint, device=device))


class Sam2TrackWidget(TrackingWidget):
    METHOD = "sam2"
    TITLE = TITLE
    STATE_KEY = STATE_KEY
    RESULT_NAME = "SAM2 masks"
    refine_job = staticmethod(_refine_job)

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.preview_layer: Optional[Labels] = None
        self._click_session = ClickSession()

        self.video_combo = self.video_picker()
        prompt_controls = self.prompt_controls()
        self.boxes_combo = self.layer_picker("Boxes", Shapes, optional=True)
        self.boxes_combo.tooltip = "rectangles (one per object and frame) whose obj_id feature names their object"
        self.new_boxes_button = PushButton(text="New box layer")
        self.obj_spin.tooltip = "label value of the object the next clicks and boxes belong to"
        # plain SAM2 weights only (variant None): variants have their own widgets
        self.model_combo = self.weights_picker("Model", variant=None, item=_weights_item,
                                               after=[(RANDOM_TINY, (TINY_CONFIG, None))])
        self.tracking_controls()
        self.preview_button = PushButton(text="Preview current frame")
        self.preview_button.tooltip = "segment only the frame shown, from its own clicks (no tracking): check the clicks first"
        self.extend([
            self.video_combo, *prompt_controls[:2], self.boxes_combo, self.new_boxes_button, *prompt_controls[2:],
            self.model_combo, self.direction_combo, *self.frames.widgets, self.device_combo, self.result_combo,
            self.preview_button, self.track_button, *self.correction_controls, self.status,
        ])
        self.runs = self.run_control([self.preview_button])
        self.new_boxes_button.changed.connect(self.new_box_layer)
        self.boxes_combo.changed.connect(self._apply_defaults)
        self.preview_button.changed.connect(self.preview)

    def model_loader(self) -> Callable[[], Any]:
        model, checkpoint = self.model_combo.value
        return functools.partial(_model, self.models, model, checkpoint, device_value(self.device_combo.value))

    # ------------------------------------------------------------------ prompts
    def new_box_layer(self, *_: Any) -> Shapes:
        """A Shapes layer for boxes: each rectangle gets the object id of the
        spin box (feature obj_id); in rectangle mode."""
        video = self.video_combo.value
        name = f"{video.name} boxes" if video is not None else "SAM2 boxes"
        layer = self.add_shapes(video, name, features={"obj_id": np.zeros(0, int)}, select=True,
                                edge_color=BOX_COLOR, face_color="transparent", edge_width=2)
        return self.use_prompt_layer(layer, self.boxes_combo, "add_rectangle")

    def prompt_layers(self) -> list:
        return [self.prompts_combo.value, self.boxes_combo.value]

    def prompts(self, video: Image) -> list:
        """The prompts of the chosen points and box layers, merged per frame
        and object (video pixel coordinates); SurgsegError if unusable."""
        points, boxes = self.prompts_combo.value, self.boxes_combo.value
        raw: list = []
        if points is not None and len(points.data):
            raw += prompts_from_layer(points, video)
        if boxes is not None and len(boxes.data):
            raw += prompts_from_boxes(boxes, video)
        return normalize_prompts(raw) if raw else []

    # ------------------------------------------------------------------ tracking
    def _inputs(self):
        """(video layer, prompts, (T, H, W)) or None after telling the user what is missing."""
        video = self._video()
        if video is None:
            return None
        try:
            prompts = self.prompts(video)
            if not prompts:
                show_error(f"{TITLE}: no prompts: click on the object in a prompt layer ('New prompt layer') or "
                           "draw a box ('New box layer') first")
                return None
            return video, prompts, video_shape(video)
        except SurgsegError as exc:
            show_error(f"{TITLE}: {exc}")
            return None

    def track(self, *_: Any) -> None:
        inputs = self._inputs()
        if inputs is None:
            return
        video, prompts, (n, h, w) = inputs
        try:
            frame_range = self.frames.resolve(n)
        except SurgsegError as exc:
            show_error(f"{TITLE}: {exc}")
            return
        self.start_tracking(video, prompts, _track_job, (video.data, prompts), frame_range, "Tracking with SAM2")

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
