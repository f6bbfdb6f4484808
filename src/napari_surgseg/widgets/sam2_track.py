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
import weakref
from typing import Any, List, Optional, Tuple

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.outputs import ArrayWriter
from surgseg_core.sam2_engine.refine import (
    VALIDATED_KEY, FrameUndo, StackWriter, frames_of, mark_validated, repropagate,
)
from surgseg_core.sam2_engine.session import ClickSession
from surgseg_core.sam2_engine.track import (
    load_tracking_model, normalize_prompts, preview_frame, prompts_from_points_table, track_video,
)

from .._autosave import request_save
from .base import (
    FrameRange, MethodWidget, ModelCache, RunControl, StatusLabel, device_value, discard_layers, frame_of,
    resolve_range, video_key, video_shape,
)

TITLE = "Track with SAM2"
RANDOM_TINY = "random tiny (testing)"
POSITIVE_COLORS = {True: "lime", False: "magenta"}
BOX_COLOR = "yellow"
MAX_UNDO_RUNS = 10  # per layer; each keeps only the frames its run changed
STATE_KEY = "sam2_tracking"  # the widget's own state of a masks layer (status, prompts, video, objects)


def _weights_item(entry) -> Tuple[str, Tuple[str, Optional[str]]]:
    """(label, (model, checkpoint)) of a registry entry."""
    if entry.source == "official":
        return (entry.name if entry.present else f"{entry.name} (not downloaded)"), (entry.name, entry.name)
    return f"{entry.name} (fine-tuned)", (entry.name, None)


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


def _track_job(cache: ModelCache, model: str, checkpoint: Optional[str], device: Optional[str], frames, prompts, *,
               progress=None, cancel=None, **kwargs):
    """Worker body: ``track_video`` with the cached model."""
    net = _model(cache, model, checkpoint, device)
    return track_video(frames, prompts, model=net, progress=progress, cancel=cancel, **kwargs)


def _preview_job(session: ClickSession, cache: ModelCache, model: str, checkpoint: Optional[str],
                 device: Optional[str], frames, prompts, *, frame_range, sink, progress=None, cancel=None, **_):
    """Worker body of a preview: the session keeps the engine (and the frames
    it encoded) across previews, so a second click on a frame only decodes."""
    return preview_frame(frames, prompts, frame_range[0], model=_model(cache, model, checkpoint, device),
                         session=session, sink=sink, cancel=cancel)


def _refine_job(cache: ModelCache, model: str, checkpoint: Optional[str], device: Optional[str], frames, labels,
                frame: int, *, progress=None, cancel=None, **kwargs):
    """Worker body: ``repropagate`` with the cached model."""
    net = _model(cache, model, checkpoint, device)
    return repropagate(frames, labels, frame, model=net, progress=progress, cancel=cancel, **kwargs)


def _model(cache: ModelCache, model: str, checkpoint: Optional[str], device: Optional[str]):
    """The model built once per (model, checkpoint, device): previews and
    tracking runs then skip rebuilding and reloading the weights."""
    return cache.get((model, checkpoint, device), lambda: load_tracking_model(model, checkpoint, device=device))


def is_result_layer(layer) -> bool:
    """A tracking result (not a preview) made by this widget."""
    meta = (getattr(layer, "metadata", None) or {}).get(STATE_KEY)
    return isinstance(layer, Labels) and isinstance(meta, dict) and meta.get("status") != "preview"


def result_choices(viewer):
    """Choices for the result-layer combo: a new layer, or any 3-D Labels
    layer but previews (a user's own label stack can be refined too)."""

    def choices(_widget=None):
        items = [
            (layer.name, layer) for layer in viewer.layers
            if isinstance(layer, Labels) and layer.ndim == 3
            and ((layer.metadata or {}).get(STATE_KEY) or {}).get("status") != "preview"
        ]
        return [("(new layer)", None)] + items

    return choices


class Sam2TrackWidget(MethodWidget):
    METHOD = "sam2"
    TITLE = TITLE

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.result_layer: Optional[Labels] = None
        self.preview_layer: Optional[Labels] = None
        self._click_session = ClickSession()
        self.last_summary: Optional[dict] = None
        v = napari_viewer

        self.video_combo = self.video_picker()
        self.prompts_combo = self.layer_picker("Prompts", Points)
        self.new_prompts_button = PushButton(text="New prompt layer")
        self.boxes_combo = self.layer_picker("Boxes", Shapes, optional=True)
        self.boxes_combo.tooltip = "rectangles (one per object and frame) whose obj_id feature names their object"
        self.new_boxes_button = PushButton(text="New box layer")
        self.obj_spin = SpinBox(label="Object id", min=1, max=255, value=1)
        self.obj_spin.tooltip = "label value of the object the next clicks and boxes belong to"
        self.positive_check = CheckBox(text="Positive click (on the object)", value=True)
        self.positive_check.tooltip = "unchecked: the next clicks mark background (negative)"
        # plain SAM2 weights only (variant None): variants have their own widgets
        self.model_combo = self.weights_picker("Model", variant=None, item=_weights_item,
                                               after=[(RANDOM_TINY, (TINY_CONFIG, None))])
        self.direction_combo = ComboBox(label="Direction", choices=["both", "forward", "backward"], value="both")
        self.frames = FrameRange()
        self.start_spin, self.end_spin = self.frames.start_spin, self.frames.end_spin
        self.device_combo = self.device_picker()
        self.result_combo = ComboBox(label="Masks layer", choices=result_choices(v))
        self.result_combo.tooltip = ("where Track writes and what Re-propagate refines; (new layer): the video's "
                                     "last result layer, else a new one")
        self.preview_button = PushButton(text="Preview current frame")
        self.preview_button.tooltip = "segment only the frame shown, from its own clicks (no tracking): check the clicks first"
        self.track_button = PushButton(text="Track")
        self.repropagate_button = PushButton(text="Re-propagate from this frame")
        self.repropagate_button.tooltip = (
            "the masks painted on the frame shown become SAM2 prompts; tracking continues from it in the chosen "
            "direction into the same layer (frames on the other side and checked frames are kept)")
        self.check_button = PushButton(text="Mark this frame checked")
        self.check_span_button = PushButton(text="Mark First..Last checked")
        self.uncheck_button = PushButton(text="Unmark this frame")
        self.check_button.tooltip = "checked frames are never overwritten by a model run and guide re-propagation"
        self.undo_button = PushButton(text="Undo last model run", enabled=False)
        self.undo_button.tooltip = "put back the frames the last Track / Re-propagate into this layer changed"
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.checked_label = StatusLabel()
        self.extend([
            self.video_combo, self.prompts_combo, self.new_prompts_button, self.boxes_combo, self.new_boxes_button,
            self.obj_spin, self.positive_check, self.model_combo, self.direction_combo, *self.frames.widgets,
            self.device_combo, self.result_combo, self.preview_button, self.track_button, self.repropagate_button,
            self.check_button, self.check_span_button, self.uncheck_button, self.checked_label,
            self.undo_button, self.cancel_button, self.status,
        ])
        self.runs = RunControl(self, [self.track_button, self.preview_button, self.repropagate_button,
                                      self.check_button, self.check_span_button, self.uncheck_button],
                               self.cancel_button, after=self._update_result_state)
        # per result layer, the undo records of its model runs (newest last)
        self._undo: "weakref.WeakKeyDictionary[Labels, List[FrameUndo]]" = weakref.WeakKeyDictionary()
        self.new_prompts_button.changed.connect(self.new_prompt_layer)
        self.new_boxes_button.changed.connect(self.new_box_layer)
        self.obj_spin.changed.connect(self._apply_defaults)
        self.positive_check.changed.connect(self._apply_defaults)
        self.prompts_combo.changed.connect(self._apply_defaults)
        self.boxes_combo.changed.connect(self._apply_defaults)
        self.preview_button.changed.connect(self.preview)
        self.track_button.changed.connect(self.track)
        self.repropagate_button.changed.connect(self.repropagate)
        self.check_button.changed.connect(lambda *_: self.mark_checked())
        self.check_span_button.changed.connect(lambda *_: self.mark_checked(span=True))
        self.uncheck_button.changed.connect(lambda *_: self.mark_checked(checked=False))
        self.undo_button.changed.connect(self.undo_last_run)
        self.result_combo.changed.connect(self._update_result_state)

    @property
    def worker(self):
        return self.runs.worker

    @property
    def cancel_token(self):
        return self.runs.token

    # ------------------------------------------------------------------ prompts
    def new_prompt_layer(self, *_: Any) -> Points:
        """A Points layer for clicks: features obj_id / positive, coloured
        green (object) / magenta (background), in add mode."""
        video = self.video_combo.value
        name = f"{video.name} prompts" if video is not None else "SAM2 prompts"
        layer = self.add_points(
            video, name, features={"obj_id": np.zeros(0, int), "positive": np.zeros(0, bool)}, select=True,
            face_color="positive", face_color_cycle=POSITIVE_COLORS,
            size=max(4.0, (video_shape(video)[2] / 80) if video is not None else 8.0),
        )
        self.reset_choices()
        self.prompts_combo.value = layer
        self._apply_defaults()
        layer.mode = "add"
        return layer

    def new_box_layer(self, *_: Any) -> Shapes:
        """A Shapes layer for boxes: each rectangle gets the object id of the
        spin box (feature obj_id); in rectangle mode."""
        video = self.video_combo.value
        name = f"{video.name} boxes" if video is not None else "SAM2 boxes"
        layer = self.add_shapes(video, name, features={"obj_id": np.zeros(0, int)}, select=True,
                                edge_color=BOX_COLOR, face_color="transparent", edge_width=2)
        self.reset_choices()
        self.boxes_combo.value = layer
        self._apply_defaults()
        layer.mode = "add_rectangle"
        return layer

    def _apply_defaults(self, *_: Any) -> None:
        for layer in (self.prompts_combo.value, self.boxes_combo.value):
            if layer is None:
                continue
            defaults = {}
            if "obj_id" in layer.features:
                defaults["obj_id"] = int(self.obj_spin.value)
            if isinstance(layer, Points) and "positive" in layer.features:
                defaults["positive"] = bool(self.positive_check.value)
            if defaults:
                layer.feature_defaults = defaults

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
        video = self.video_combo.value
        if video is None:
            show_error(f"{TITLE}: no video layer: open a video first (File > Open or 'Load surgical video')")
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

    def _new_labels(self, video: Image, shape, name: str, status: str, prompts: list) -> Labels:
        # a sparse on-disk stack: creating it touches no frame (no stall, no RAM);
        # the prompt layer stays selected: clicks keep landing there
        return self.add_labels(
            video, new_label_stack(shape, name=name, max_ram_mb=0), name,
            metadata={STATE_KEY: {"status": status, "prompts": prompts, "video": video_key(video)}, VALIDATED_KEY: []},
        )

    def _existing_result(self, video: Image, shape) -> Optional[Labels]:
        """The layer to track into: the one chosen if it fits the video, else
        the video's latest result layer (no stacking of layers), else None."""
        chosen = self.result_combo.value
        if chosen is not None and chosen in self.viewer.layers and tuple(chosen.data.shape) == tuple(shape):
            return chosen
        key = video_key(video)
        for layer in reversed(list(self.viewer.layers)):
            if (is_result_layer(layer) and tuple(layer.data.shape) == tuple(shape)
                    and layer.metadata[STATE_KEY].get("video") == key):
                return layer
        return None

    def current_frame(self, layer) -> int:
        """The frame shown, in ``layer``'s frame index (layers may be scaled in time)."""
        return frame_of(self.viewer, layer)

    def _start(self, job, args: tuple, kwargs: dict, labels: Labels, on_done, description: str,
               created: bool = False) -> None:
        """Run a core job in a worker that writes into ``labels``' array (one
        code path for every button); ``created``: ``labels`` is new, so a
        failure removes it."""
        model, checkpoint = self.model_combo.value
        self.last_summary = None
        self.runs.start(job, self.models, model, checkpoint, device_value(self.device_combo.value), *args,
                        description=description, on_done=on_done, refresh=[labels],
                        on_error=lambda exc: self._on_stopped(labels, exc, created), **kwargs)
        self._update_result_state()

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
        layer = self._existing_result(video, (n, h, w))
        created = layer is None
        if created:
            layer = self._new_labels(video, (n, h, w), f"{video.name} SAM2 masks", "running", prompts)
        else:
            layer.metadata[STATE_KEY] = {**(layer.metadata.get(STATE_KEY) or {}), "status": "running",
                                         "prompts": prompts, "video": video_key(video)}
        self.result_layer = layer
        self.result_combo.reset_choices()
        self.result_combo.value = layer
        protect = frames_of(layer.metadata.get(VALIDATED_KEY))
        undo = self._new_undo(layer)
        self.status.value = "tracking…"
        self._start(_track_job, (video.data, prompts),
                    {"direction": self.direction_combo.value, "frame_range": frame_range,
                     "sink": StackWriter(layer.data, protect=protect, undo=undo)},
                    layer, self._on_done, "Tracking with SAM2", created)

    def repropagate(self, *_: Any) -> None:
        """Propagate the masks of the frame shown (after a correction) in the
        chosen direction into the masks layer, keeping checked frames."""
        video, layer = self.video_combo.value, self.result_combo.value
        if video is None:
            show_error(f"{TITLE}: no video layer: open a video first (File > Open or 'Load surgical video')")
            return
        try:
            n, h, w = video_shape(video)
        except SurgsegError as exc:
            show_error(f"{TITLE}: {exc}")
            return
        if layer is None:
            layer = self._existing_result(video, (n, h, w))
        if layer is None or tuple(layer.data.shape) != (n, h, w):
            show_error(f"{TITLE}: choose the masks layer to refine ('Masks layer'): a labels layer of the video's "
                       f"size {n} x {h} x {w} (Track first)")
            return
        t = self.current_frame(layer)
        try:
            frame_range = self.frames.resolve(n, include=t)  # the range always holds the frame it starts from
        except SurgsegError as exc:
            show_error(f"{TITLE}: {exc}")
            return
        meta = layer.metadata.get(STATE_KEY) or {}
        here = {int(v) for v in np.unique(np.asarray(layer.data[t])) if v != 0}
        # objects tracked before but erased on this frame are told "absent here"
        obj_ids = sorted(here | {int(i) for i in meta.get("obj_ids", [])})
        if not obj_ids:
            show_error(f"{TITLE}: frame {t} has no masks to propagate: paint the object(s) on it first")
            return
        self.result_layer = layer
        self.result_combo.value = layer
        undo = self._new_undo(layer)
        direction = self.direction_combo.value
        layer.metadata[STATE_KEY] = {**meta, "status": "running"}
        self.status.value = f"re-propagating from frame {t} ({direction})…"
        self._start(_refine_job, (video.data, layer.data, t),
                    {"direction": direction, "validated": layer.metadata.get(VALIDATED_KEY) or [],
                     "obj_ids": obj_ids, "frame_range": frame_range, "undo": undo},
                    layer, self._on_refined, "Re-propagating with SAM2")

    # ------------------------------------------------------------------ checked frames, undo
    def mark_checked(self, *, checked: bool = True, span: bool = False) -> Optional[list]:
        """Mark (or unmark) the frame shown, or the First..Last frames, as
        checked in the masks layer's metadata (autosaved with it)."""
        layer = self.result_combo.value
        if layer is None:
            show_error(f"{TITLE}: choose the masks layer whose frames you checked ('Masks layer')")
            return None
        n = layer.data.shape[0]
        if span:
            last = int(self.end_spin.value)
            try:  # a Last beyond the layer's end means its end
                first, last = resolve_range(int(self.start_spin.value), last if last < n else -1, n)
            except SurgsegError as exc:
                show_error(f"{TITLE}: {exc}")
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
            show_info(f"{TITLE}: no model run to undo on this layer")
            return []
        undo = runs.pop()
        frames = undo.restore(layer.data)
        undo.discard()
        layer.refresh()
        request_save(layer)
        self.status.value = f"undid the last model run: {len(frames)} frame(s) restored"
        self._update_result_state()
        return frames

    def _update_result_state(self, *_: Any) -> None:
        layer = self.result_combo.value
        checked = frames_of(layer.metadata.get(VALIDATED_KEY)) if layer is not None else set()
        self.checked_label.value = f"{len(checked)} checked frame(s)" if checked else ""
        self.undo_button.enabled = not self.runs.busy and bool(self._runs(layer))

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

    def cancel(self, *_: Any) -> None:
        if self.runs.cancel():
            self.status.value = "cancelling…"

    def _on_done(self, summary: dict) -> None:
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            layer.metadata[STATE_KEY] = {**(layer.metadata.get(STATE_KEY) or {}), "status": "completed",
                                         "obj_ids": list(summary["obj_ids"])}
            self.set_provenance(layer, summary["provenance"])
            self._drop_empty_undo(layer)
            layer.refresh()
        msg = f"tracked object(s) {summary['obj_ids']} over {summary['frames_written']} frame(s)"
        self._report(msg, summary)

    def _on_refined(self, summary: dict) -> None:
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            meta = layer.metadata.get(STATE_KEY) or {}
            ids = sorted(set(meta.get("obj_ids", [])) | set(summary["obj_ids"]))
            layer.metadata[STATE_KEY] = {**meta, "status": "completed", "obj_ids": ids}
            self.set_provenance(layer, summary["provenance"])
            self._drop_empty_undo(layer)
            layer.refresh()
        lo, hi = summary["frame_range"]
        kept = summary["frames_protected"]
        msg = (f"re-propagated object(s) {summary['obj_ids']} from frame {summary['frame']} over frames {lo}..{hi}: "
               f"{len(summary['frames_changed'])} frame(s) changed"
               + (f", {len(kept)} checked frame(s) kept" if kept else ""))
        self._report(msg, summary)

    def _report(self, msg: str, summary: dict) -> None:
        self.status.value = msg
        if summary["random_weights"]:
            show_warning(f"{TITLE}: {msg} with RANDOM SAM2 weights: the masks are not segmentations")
        else:
            show_info(f"{TITLE}: {msg}")

    def _on_stopped(self, layer: Labels, exc: BaseException, created: bool = False) -> None:
        from surgseg_core.errors import Cancelled

        status = "cancelled" if isinstance(exc, Cancelled) else "failed"
        if status == "failed" and created:  # a failed run is no result: leave no layer behind
            discard_layers(self.viewer, [layer])
            self.result_layer = None if self.result_layer is layer else self.result_layer
            self.preview_layer = None if self.preview_layer is layer else self.preview_layer
            self.status.value = f"failed: {exc}"
            return
        layer.metadata[STATE_KEY] = {**layer.metadata.get(STATE_KEY, {}), "status": status, "error": str(exc)}
        self._drop_empty_undo(layer)  # frames written before the stop stay undoable
        layer.refresh()
        self.status.value = f"{status}: frames shown are complete" if status == "cancelled" else f"failed: {exc}"
