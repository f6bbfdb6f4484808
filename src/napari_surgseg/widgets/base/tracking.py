"""``TrackingWidget``: the base of widgets that track objects through a
video into a label stack the user corrects ("Track with SAM2",
"Clicks (RP-SAM2)", "Anatomy (F2PASeg)").

What they share, once:

* prompts: a Points layer with features ``obj_id`` / ``positive`` (the
  picker is optional, "(none)" first: another Points layer, such as a
  sample's ground truth, never becomes prompts unasked), optionally a Shapes
  layer of rectangles (boxes, feature ``obj_id``), the widgets choosing the
  object of the next click / box (an object-id spin box unless the subclass
  gives its own, :meth:`TrackingWidget.object_widgets`) and a
  positive/negative toggle; they set the layers' ``feature_defaults``
  (:meth:`TrackingWidget.prompt_controls`);
* Track (core: ``sam2_engine.track.track_video``) in a worker that writes
  each frame into the masks layer: a sparse on-disk stack (created instantly)
  that tracking the same video again reuses, with the widget's state under
  its ``STATE_KEY`` (status, prompts, video, objects);
* corrections that propagate (core: ``sam2_engine.refine.repropagate``):
  "Re-propagate from this frame" makes the frame's painted masks SAM2 mask
  prompts; checked (validated) frames, kept in the layer's metadata
  (``validated_frames``, autosaved), are never overwritten; every model run
  into a layer is undone as one step; cancel leaves whole frames.

A subclass sets ``STATE_KEY``, ``RESULT_NAME`` and ``TITLE``, builds its
controls (``prompt_controls``, ``tracking_controls``, ``layout``), starts
``self.runs = self.run_control([...])``, and gives :meth:`model_loader`
(what the worker jobs call to get the model). ``track_job`` / ``refine_job``
(worker bodies, called with that loader first) default to the plain
engine's. The hooks below (object ids, layer styles, state and provenance
extras, the re-propagation direction) default to plain object tracking.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, List, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import Cancelled, SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.sam2_engine.refine import (
    VALIDATED_KEY, FrameUndo, StackWriter, frames_of, mark_validated, repropagate,
)
from surgseg_core.sam2_engine.track import normalize_prompts, prompts_from_points_table, track_video

from ..._autosave import request_save
from .layers import frame_of, video_key, video_shape
from .pickers import FrameRange, resolve_range
from .run import RunControl
from .status import StatusLabel
from .widget import MethodWidget

POSITIVE_COLORS = {True: "lime", False: "magenta"}
BOX_COLOR = "yellow"
MAX_UNDO_RUNS = 10  # per layer; each keeps only the frames its run changed
NO_VIDEO = "no video layer: open a video first (File > Open or 'Load surgical video')"


def is_result_layer(layer, key: str) -> bool:
    """A tracking result (not a preview) of the widget whose state is under ``key``."""
    meta = (getattr(layer, "metadata", None) or {}).get(key)
    return isinstance(layer, Labels) and isinstance(meta, dict) and meta.get("status") != "preview"


def result_choices(viewer, key: str):
    """Choices for the masks-layer combo: a new layer, or any 3-D Labels
    layer but previews (a user's own label stack can be refined too)."""

    def choices(_widget=None):
        items = [
            (layer.name, layer) for layer in viewer.layers
            if isinstance(layer, Labels) and layer.ndim == 3
            and ((layer.metadata or {}).get(key) or {}).get("status") != "preview"
        ]
        return [("(new layer)", None)] + items

    return choices


def prompts_from_layer(points: Points, video: Image) -> list:
    """Prompts (video pixel coordinates) from a Points layer's (t, y, x)
    points and its ``obj_id`` / ``positive`` features; points pass through
    world coordinates so a scaled or shifted layer still lands on the video."""
    data = np.asarray(points.data, float)
    if data.ndim != 2 or data.shape[1] != 3:
        raise SurgsegError(
            f"points layer {points.name!r} has {data.shape[-1]}-D points: prompts need a frame; "
            "use 'New prompt layer'"
        )
    coords = np.array([video.world_to_data(points.data_to_world(p))[-3:] for p in data]) if len(data) else data
    return prompts_from_points_table(coords, features=points.features)


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


def track_job(load: Callable, frames, prompts, *, progress=None, cancel=None, **kwargs):
    """Worker body of Track: ``track_video`` with the cached model."""
    return track_video(frames, prompts, model=load(), progress=progress, cancel=cancel, **kwargs)


def refine_job(load: Callable, frames, labels, frame: int, *, progress=None, cancel=None, **kwargs):
    """Worker body of Re-propagate: ``repropagate`` with the cached model."""
    return repropagate(frames, labels, frame, model=load(), progress=progress, cancel=cancel, **kwargs)


class TrackingWidget(MethodWidget):
    """Base of the tracking widgets (see the module docstring)."""

    #: metadata key of the widget's own state of a masks layer
    STATE_KEY: str = "tracking"
    #: the masks layer is "<video> <RESULT_NAME>"
    RESULT_NAME: str = "masks"
    #: new prompt / box layers without a video: "<LAYER_PREFIX> prompts" (default: TITLE)
    LAYER_PREFIX: Optional[str] = None
    #: the Track button's text, the status line while it runs, the verb of its report
    TRACK_TEXT = "Track"
    RUNNING_TEXT = "tracking"
    DONE_VERB = "tracked"  # "tracked object(s) [1, 2] over 60 frame(s)"
    #: progress-bar names of Track (:meth:`track`) and Re-propagate (default: "Re-propagating (TITLE)")
    TRACK_DESCRIPTION = "Tracking"
    REFINE_DESCRIPTION: Optional[str] = None
    #: worker bodies: ``track_job(load, frames, prompts, direction=, frame_range=, sink=, progress=, cancel=)``
    #: and ``refine_job(load, frames, labels, frame, progress=, cancel=, **options)``
    track_job = staticmethod(track_job)
    refine_job = staticmethod(refine_job)

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.result_layer: Optional[Labels] = None
        self.last_summary: Optional[dict] = None
        self.boxes_combo: Optional[ComboBox] = None
        # per result layer, the undo records of its model runs (newest last)
        self._undo: "weakref.WeakKeyDictionary[Labels, List[FrameUndo]]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ hooks
    def object_widgets(self) -> list:
        """The widgets choosing the object of the next click / box: an object-id spin box."""
        self.obj_spin = SpinBox(label="Object id", min=1, max=255, value=1)
        self.obj_spin.tooltip = "label value of the object the next clicks belong to"
        self.obj_spin.changed.connect(self._apply_defaults)
        return [self.obj_spin]

    def current_obj_id(self) -> int:
        """The object id (label value) the next click or box gets."""
        return int(self.obj_spin.value)

    def check_obj_ids(self, ids, where: str) -> None:
        """SurgsegError when object ids are not allowed (e.g. not classes of a class set)."""

    def describe_objects(self, ids) -> str:
        return f"object(s) {list(ids)}"

    def points_style(self) -> dict:
        """Keyword arguments of a new prompt (Points) layer: its colours."""
        return {"face_color": "positive", "face_color_cycle": POSITIVE_COLORS}

    def boxes_style(self) -> dict:
        """Keyword arguments of a new box (Shapes) layer: its colours."""
        return {"edge_color": BOX_COLOR}

    def style_boxes(self, layer: Shapes) -> None:
        """Style a new box layer once it exists (e.g. colours by feature)."""

    def labels_style(self) -> dict:
        """Keyword arguments of a new masks (Labels) layer (e.g. its colormap)."""
        return {}

    def prepare_result(self, layer: Labels) -> None:
        """A masks layer about to receive a run (new or reused): e.g. its colours."""

    def fits(self, layer: Labels) -> bool:
        """Whether an earlier masks layer of the video can take this run."""
        return True

    def state_extra(self) -> dict:
        """More of the widget's state to keep in a masks layer's metadata."""
        return {}

    def provenance(self, summary: dict) -> dict:
        """What to record as the masks layer's provenance for a run's summary."""
        return summary["provenance"]

    def repropagation_direction(self) -> str:
        return self.direction_combo.value

    def model_loader(self) -> Callable[[], Any]:
        """A callable the worker calls to get the chosen model (cached)."""
        raise NotImplementedError

    def error(self, message: str) -> None:
        """Tell the user what is wrong (a napari error notification)."""
        show_error(f"{self.TITLE}: {message}")

    # ------------------------------------------------------------------ controls
    def prompt_controls(self, boxes: bool = False) -> list:
        """Prompts layer picker, "New prompt layer", (with ``boxes``: box
        layer picker, "New box layer"), the object widgets, positive toggle."""
        # optional, "(none)" first: another Points layer (a sample's landmarks) must never become prompts unasked
        self.prompts_combo = self.layer_picker("Prompts", Points, optional=True)
        self.prompts_combo.tooltip = "clicks with obj_id / positive features ('New prompt layer')"
        self.new_prompts_button = PushButton(text="New prompt layer")
        self.new_prompts_button.changed.connect(self.new_prompt_layer)
        controls = [self.prompts_combo, self.new_prompts_button]
        if boxes:
            self.boxes_combo = self.layer_picker("Boxes", Shapes, optional=True)
            self.boxes_combo.tooltip = "rectangles (one per object and frame) whose obj_id feature names their object"
            self.new_boxes_button = PushButton(text="New box layer")
            self.new_boxes_button.changed.connect(self.new_box_layer)
            self.boxes_combo.changed.connect(self._apply_defaults)
            controls += [self.boxes_combo, self.new_boxes_button]
        self.positive_check = CheckBox(text="Positive click (on the object)", value=True)
        self.positive_check.tooltip = "unchecked: the next clicks mark background (negative)"
        for widget in (self.positive_check, self.prompts_combo):
            widget.changed.connect(self._apply_defaults)
        return [*controls, *self.object_widgets(), self.positive_check]

    def tracking_controls(self) -> None:
        """Direction, frame range, device, precision, masks layer; Track, Re-propagate,
        checked frames, undo, Cancel (placed by :meth:`layout`)."""
        self.direction_combo = ComboBox(label="Direction", choices=["both", "forward", "backward"], value="both")
        self.frames = FrameRange()
        self.start_spin, self.end_spin = self.frames.start_spin, self.frames.end_spin
        self.device_combo = self.device_picker()
        self.precision_combo = self.precision_picker()
        self.result_combo = ComboBox(label="Masks layer", choices=result_choices(self.viewer, self.STATE_KEY))
        self.result_combo.tooltip = (f"where {self.TRACK_TEXT} writes and what Re-propagate refines; (new layer): "
                                     "the video's last result layer, else a new one")
        self.track_button = PushButton(text=self.TRACK_TEXT)
        self.repropagate_button = PushButton(text="Re-propagate from this frame")
        self.repropagate_button.tooltip = (
            "the masks painted on the frame shown become mask prompts; tracking continues from it in the chosen "
            "direction into the same layer (frames on the other side and checked frames are kept)")
        self.check_button = PushButton(text="Mark this frame checked")
        self.check_span_button = PushButton(text="Mark First..Last checked")
        self.uncheck_button = PushButton(text="Unmark this frame")
        self.check_button.tooltip = "checked frames are never overwritten by a model run and guide re-propagation"
        self.undo_button = PushButton(text="Undo last model run", enabled=False)
        self.undo_button.tooltip = (f"put back the frames the last {self.TRACK_TEXT} / Re-propagate into this layer "
                                    "changed")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.checked_label = StatusLabel()
        self.track_button.changed.connect(self.track)
        self.repropagate_button.changed.connect(self.repropagate)
        self.check_button.changed.connect(lambda *_: self.mark_checked())
        self.check_span_button.changed.connect(lambda *_: self.mark_checked(span=True))
        self.uncheck_button.changed.connect(lambda *_: self.mark_checked(checked=False))
        self.undo_button.changed.connect(self.undo_last_run)
        self.result_combo.changed.connect(self._update_result_state)

    @property
    def correction_controls(self) -> list:
        return [self.repropagate_button, self.check_button, self.check_span_button, self.uncheck_button,
                self.checked_label, self.undo_button, self.cancel_button]

    def layout(self, prompt_controls: list, model: ComboBox, run_buttons: list = ()) -> None:
        """Place the controls: video, prompts, model, direction, frames,
        device, precision, masks layer, ``run_buttons``, Track, corrections, status."""
        self.extend([
            self.video_combo, *prompt_controls, model, self.direction_combo, *self.frames.widgets,
            self.device_combo, self.precision_combo, self.result_combo, *run_buttons, self.track_button, *self.correction_controls,
            self.status,
        ])

    def run_control(self, buttons: list) -> RunControl:
        """The widget's RunControl: ``buttons`` plus the correction buttons
        are disabled while a run goes on."""
        return RunControl(self, [*buttons, self.track_button, self.repropagate_button, self.check_button,
                                 self.check_span_button, self.uncheck_button],
                          self.cancel_button, after=self._run_ended)

    @property
    def worker(self):
        return self.runs.worker

    @property
    def cancel_token(self):
        return self.runs.token

    # ------------------------------------------------------------------ prompts
    def _new_layer_name(self, what: str) -> str:
        video = self.video_combo.value
        return f"{video.name} {what}" if video is not None else f"{self.LAYER_PREFIX or self.TITLE} {what}"

    def new_prompt_layer(self, *_: Any) -> Points:
        """A Points layer for clicks: features obj_id / positive, coloured
        by :meth:`points_style` (default green object / magenta background), in add mode."""
        video = self.video_combo.value
        layer = self.add_points(
            video, self._new_layer_name("prompts"),
            features={"obj_id": np.zeros(0, int), "positive": np.zeros(0, bool)}, select=True,
            size=max(4.0, (video_shape(video)[2] / 80) if video is not None else 8.0), **self.points_style(),
        )
        return self.use_prompt_layer(layer, self.prompts_combo, "add")

    def new_box_layer(self, *_: Any) -> Shapes:
        """A Shapes layer for boxes: each rectangle gets the object id chosen
        (feature obj_id); in rectangle mode."""
        layer = self.add_shapes(self.video_combo.value, self._new_layer_name("boxes"),
                                features={"obj_id": np.zeros(0, int)}, select=True, face_color="transparent",
                                edge_width=2, **self.boxes_style())
        self.style_boxes(layer)
        return self.use_prompt_layer(layer, self.boxes_combo, "add_rectangle")

    def use_prompt_layer(self, layer, combo: ComboBox, mode: str):
        """Make a new prompt layer ``combo``'s choice, with the current
        defaults, in ``mode`` (the user clicks or draws in it next)."""
        self.reset_choices()
        combo.value = layer
        self._apply_defaults()
        layer.mode = mode
        return layer

    def prompt_layers(self) -> list:
        """The layers whose new points / shapes take the object id (and sign)."""
        return [self.prompts_combo.value] + ([self.boxes_combo.value] if self.boxes_combo is not None else [])

    def _apply_defaults(self, *_: Any) -> None:
        for layer in self.prompt_layers():
            if layer is None:
                continue
            defaults = {}
            if "obj_id" in layer.features:
                defaults["obj_id"] = int(self.current_obj_id())
            if isinstance(layer, Points) and "positive" in layer.features:
                defaults["positive"] = bool(self.positive_check.value)
            if defaults:
                layer.feature_defaults = defaults

    def prompts(self, video: Image) -> list:
        """The prompts of the chosen points (and box) layers, merged per
        frame and object (video pixel coordinates); SurgsegError if unusable."""
        points = self.prompts_combo.value
        boxes = self.boxes_combo.value if self.boxes_combo is not None else None
        raw: list = []
        if points is not None and len(points.data):
            raw += prompts_from_layer(points, video)
        if boxes is not None and len(boxes.data):
            raw += prompts_from_boxes(boxes, video)
        prompts = normalize_prompts(raw) if raw else []
        self.check_obj_ids(sorted({int(p["obj_id"]) for p in prompts}), "the prompts")
        return prompts

    def _inputs(self):
        """(video layer, prompts, (T, H, W)) or None after telling the user what is missing."""
        video = self._video()
        if video is None:
            return None
        try:
            prompts = self.prompts(video)
            if not prompts:
                self.error("no prompts: click on the object in a prompt layer ('New prompt layer')"
                           + (" or draw a box ('New box layer')" if self.boxes_combo is not None else "")
                           + " first")
                return None
            return video, prompts, video_shape(video)
        except SurgsegError as exc:
            self.error(str(exc))
            return None

    # ------------------------------------------------------------------ masks layer
    def current_frame(self, layer) -> int:
        """The frame shown, in ``layer``'s frame index (layers may be scaled in time)."""
        return frame_of(self.viewer, layer)

    def _video(self) -> Optional[Image]:
        video = self.video_combo.value
        if video is None:
            self.error(NO_VIDEO)
        return video

    def _state(self, layer) -> dict:
        return dict(((getattr(layer, "metadata", None) or {}).get(self.STATE_KEY)) or {})

    def _set_state(self, layer: Labels, **values: Any) -> None:
        layer.metadata[self.STATE_KEY] = {**self._state(layer), **values}

    def _new_labels(self, video: Image, shape, name: str, status: str, prompts: list) -> Labels:
        # a sparse on-disk stack: creating it touches no frame (no stall, no RAM);
        # the prompt layer stays selected: clicks keep landing there
        return self.add_labels(
            video, new_label_stack(shape, name=name, max_ram_mb=0), name,
            metadata={self.STATE_KEY: {"status": status, "prompts": prompts, "video": video_key(video),
                                       **self.state_extra()}, VALIDATED_KEY: []},
            **self.labels_style(),
        )

    def _existing_result(self, video: Image, shape) -> Optional[Labels]:
        """The layer to track into: the one chosen if it fits the video, else
        the video's latest result layer (no stacking of layers), else None."""
        chosen = self.result_combo.value
        if chosen is not None and chosen in self.viewer.layers and tuple(chosen.data.shape) == tuple(shape):
            return chosen
        key = video_key(video)
        for layer in reversed(list(self.viewer.layers)):
            if (is_result_layer(layer, self.STATE_KEY) and tuple(layer.data.shape) == tuple(shape)
                    and layer.metadata[self.STATE_KEY].get("video") == key and self.fits(layer)):
                return layer
        return None

    def result_for(self, video: Image, status: str, prompts: list) -> tuple:
        """(masks layer, created): the layer to write into, made current;
        created (and named "<video> <RESULT_NAME>") when there is none."""
        shape = video_shape(video)
        layer = self._existing_result(video, shape)
        created = layer is None
        if created:
            layer = self._new_labels(video, shape, f"{video.name} {self.RESULT_NAME}", status, prompts)
        else:
            self._set_state(layer, status=status, prompts=prompts, video=video_key(video), **self.state_extra())
        self.prepare_result(layer)
        self.result_layer = layer
        self.result_combo.reset_choices()
        self.result_combo.value = layer
        return layer, created

    # ------------------------------------------------------------------ runs
    def _start(self, job, args: tuple, kwargs: dict, labels: Labels, on_done, description: str,
               created: bool = False) -> None:
        """Run a core job in a worker that writes into ``labels``' array (one
        code path for every button); ``created``: ``labels`` is new, so a
        failure removes it. The job gets :meth:`model_loader` first."""
        self.last_summary = None
        self.runs.start(job, self.model_loader(), *args, description=description, on_done=on_done,
                        refresh=[labels], on_error=lambda exc: self._on_stopped(labels, exc, created), **kwargs)
        self._update_result_state()

    def track(self, *_: Any) -> None:
        """Track the prompted objects over the frame range, in the chosen
        direction, into the masks layer (``track_job``)."""
        inputs = self._inputs()
        if inputs is None:
            return
        video, prompts, (n, h, w) = inputs
        try:
            frame_range = self.frames.resolve(n)
        except SurgsegError as exc:
            self.error(str(exc))
            return
        self.start_tracking(video, prompts, type(self).track_job, (video.data, prompts), frame_range,
                            self.TRACK_DESCRIPTION)

    def start_tracking(self, video: Image, prompts: list, job, args: tuple, frame_range, description: str) -> Labels:
        """Track into the video's masks layer: ``job(load, *args,
        direction=, frame_range=, sink=)`` writes each frame through a
        ``StackWriter`` that keeps checked frames and records an undo."""
        layer, created = self.result_for(video, "running", prompts)
        protect = frames_of(layer.metadata.get(VALIDATED_KEY))
        undo = self._new_undo(layer)
        self.status.value = f"{self.RUNNING_TEXT}…"
        self._start(job, args, {"direction": self.direction_combo.value, "frame_range": frame_range,
                                "sink": StackWriter(layer.data, protect=protect, undo=undo),
                                "precision": self.precision_combo.value},
                    layer, self._on_done, description, created)
        return layer

    def _new_undo(self, layer: Labels) -> FrameUndo:
        """An undo record for the run about to start (kept even if it is cancelled)."""
        undo = FrameUndo()
        runs = self._undo.setdefault(layer, [])
        runs.append(undo)
        while len(runs) > MAX_UNDO_RUNS:
            runs.pop(0).discard()
        return undo

    def _runs(self, layer) -> List[FrameUndo]:
        return self._undo.get(layer, []) if layer is not None else []

    def _drop_empty_undo(self, layer: Labels) -> None:
        runs = self._runs(layer)
        if runs and len(runs[-1]) == 0:
            runs.pop()

    def repropagate(self, *_: Any) -> None:
        """Propagate the masks of the frame shown (after a correction) in the
        chosen direction into the masks layer, keeping checked frames."""
        video, layer = self._video(), self.result_combo.value
        if video is None:
            return
        try:
            n, h, w = video_shape(video)
        except SurgsegError as exc:
            self.error(str(exc))
            return
        if layer is None:
            layer = self._existing_result(video, (n, h, w))
        if layer is None or tuple(layer.data.shape) != (n, h, w):
            self.error(f"choose the masks layer to refine ('Masks layer'): a labels layer of the video's size "
                       f"{n} x {h} x {w} ({self.TRACK_TEXT} first)")
            return
        t = self.current_frame(layer)
        meta = self._state(layer)
        here = {int(v) for v in np.unique(np.asarray(layer.data[t])) if v != 0}
        # objects tracked before but erased on this frame are told "absent here"
        obj_ids = sorted(here | {int(i) for i in meta.get("obj_ids", [])})
        try:
            frame_range = self.frames.resolve(n, include=t)  # the range always holds the frame it starts from
            if not obj_ids:
                raise SurgsegError(f"frame {t} has no masks to propagate: paint the object(s) on it first")
            self.check_obj_ids(sorted(here), f"frame {t}")
        except SurgsegError as exc:
            self.error(str(exc))
            return
        self.prepare_result(layer)
        self.result_layer = layer
        self.result_combo.value = layer
        undo = self._new_undo(layer)
        direction = self.repropagation_direction()
        self._set_state(layer, status="running")
        self.status.value = f"re-propagating from frame {t} ({direction})…"
        self._start(type(self).refine_job, (video.data, layer.data, t),
                    {"direction": direction, "validated": layer.metadata.get(VALIDATED_KEY) or [],
                     "obj_ids": obj_ids, "frame_range": frame_range, "undo": undo,
                     "precision": self.precision_combo.value},
                    layer, self._on_refined, self.REFINE_DESCRIPTION or f"Re-propagating ({self.TITLE})")

    # ------------------------------------------------------------------ checked frames, undo
    def mark_checked(self, *, checked: bool = True, span: bool = False) -> Optional[list]:
        """Mark (or unmark) the frame shown, or the First..Last frames, as
        checked in the masks layer's metadata (autosaved with it)."""
        layer = self.result_combo.value
        if layer is None:
            self.error("choose the masks layer whose frames you checked ('Masks layer')")
            return None
        n = layer.data.shape[0]
        if span:
            last = int(self.end_spin.value)
            try:  # a Last beyond the layer's end means its end
                first, last = resolve_range(int(self.start_spin.value), last if last < n else -1, n)
            except SurgsegError as exc:
                self.error(str(exc))
                return None
        else:
            first = last = self.current_frame(layer)
        spans = mark_validated(layer.metadata.get(VALIDATED_KEY), first, last, checked=checked)
        layer.metadata[VALIDATED_KEY] = spans
        request_save(layer)
        self._update_result_state()
        return spans

    def undo_last_run(self, *_: Any) -> List[int]:
        """Put back the frames the last model run into the masks layer changed."""
        layer = self.result_combo.value
        runs = self._runs(layer)
        if not runs:
            show_info(f"{self.TITLE}: no model run to undo on this layer")
            return []
        undo = runs.pop()
        frames = undo.restore(layer.data)
        undo.discard()
        layer.refresh()
        request_save(layer)
        self.status.value = f"undid the last model run: {len(frames)} frame(s) restored"
        self._update_result_state()
        return frames

    def _run_ended(self) -> None:
        self._update_result_state()

    def _update_result_state(self, *_: Any) -> None:
        layer = self.result_combo.value
        checked = frames_of(layer.metadata.get(VALIDATED_KEY)) if layer is not None else set()
        self.checked_label.value = f"{len(checked)} checked frame(s)" if checked else ""
        self.undo_button.enabled = not self.runs.busy and bool(self._runs(layer))

    def cancel(self, *_: Any) -> None:
        if self.runs.cancel():
            self.status.value = "cancelling…"

    # ------------------------------------------------------------------ results
    def _finish(self, summary: dict, obj_ids) -> None:
        """Record a finished run on its layer: status, objects, provenance."""
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            self._set_state(layer, status="completed", obj_ids=sorted(int(i) for i in obj_ids))
            self.set_provenance(layer, self.provenance(summary))
            self._drop_empty_undo(layer)
            layer.refresh()

    def _on_done(self, summary: dict) -> None:
        self._finish(summary, summary["obj_ids"])
        self._report(f"{self.DONE_VERB} {self.describe_objects(summary['obj_ids'])} over "
                     f"{summary['frames_written']} frame(s)", summary)

    def _on_refined(self, summary: dict) -> None:
        layer = self.result_layer
        before = self._state(layer).get("obj_ids", []) if layer is not None else []
        self._finish(summary, set(before) | set(summary["obj_ids"]))
        lo, hi = summary["frame_range"]
        kept = summary["frames_protected"]
        msg = (f"re-propagated {self.describe_objects(summary['obj_ids'])} from frame {summary['frame']} over "
               f"frames {lo}..{hi}: {len(summary['frames_changed'])} frame(s) changed"
               + (f", {len(kept)} checked frame(s) kept" if kept else ""))
        self._report(msg, summary)

    def _report(self, msg: str, summary: dict) -> None:
        self.status.value = msg
        if summary["random_weights"]:
            show_warning(f"{self.TITLE}: {msg} with RANDOM weights: the masks are not segmentations")
        else:
            show_info(f"{self.TITLE}: {msg}")

    def _on_stopped(self, layer: Labels, exc: BaseException, created: bool = False) -> None:
        status = "cancelled" if isinstance(exc, Cancelled) else "failed"
        if status == "failed" and created:  # a failed run is no result: leave no layer behind
            self._discard(layer)
            self.status.value = f"failed: {exc}"
            return
        self._set_state(layer, status=status, error=str(exc))
        self._drop_empty_undo(layer)  # frames written before the stop stay undoable
        layer.refresh()
        self.status.value = f"{status}: frames shown are complete" if status == "cancelled" else f"failed: {exc}"

    def _discard(self, layer: Labels) -> None:
        from .results import discard_layers

        discard_layers(self.viewer, [layer])
        self.result_layer = None if self.result_layer is layer else self.result_layer
