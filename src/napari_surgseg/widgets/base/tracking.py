"""``TrackingWidget``: the base of widgets that track objects through a
video into a label stack the user corrects ("Track with SAM2",
"Clicks (RP-SAM2)").

What they share, once:

* click prompts: a Points layer with features ``obj_id`` / ``positive``, an
  object-id spin box and a positive/negative toggle that set the layer's
  ``feature_defaults`` (:meth:`TrackingWidget.prompt_controls`);
* the masks layer: a sparse on-disk stack (created instantly) that tracking
  the same video again reuses, with the widget's state under its
  ``STATE_KEY`` (status, prompts, video, objects);
* corrections that propagate (core: ``sam2_engine.refine.repropagate``):
  "Re-propagate from this frame" makes the frame's painted masks SAM2 mask
  prompts; checked (validated) frames, kept in the layer's metadata
  (``validated_frames``, autosaved), are never overwritten; every model run
  into a layer is undone as one step.

A subclass sets ``STATE_KEY``, ``RESULT_NAME`` and ``TITLE``, builds its
controls (``prompt_controls``, ``tracking_controls``), starts
``self.runs = self.run_control([...])``, and gives :meth:`model_loader`
(what the worker jobs call to get the model) and ``refine_job`` (the
worker body of Re-propagate, called with that loader first).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, List, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import Cancelled, SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.sam2_engine.refine import VALIDATED_KEY, FrameUndo, StackWriter, frames_of, mark_validated
from surgseg_core.sam2_engine.track import prompts_from_points_table

from ..._autosave import request_save
from .layers import frame_of, video_key, video_shape
from .pickers import FrameRange, resolve_range
from .run import RunControl
from .status import StatusLabel
from .widget import MethodWidget

POSITIVE_COLORS = {True: "lime", False: "magenta"}
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


class TrackingWidget(MethodWidget):
    """Base of the tracking widgets (see the module docstring)."""

    #: metadata key of the widget's own state of a masks layer
    STATE_KEY: str = "tracking"
    #: the masks layer is "<video> <RESULT_NAME>"
    RESULT_NAME: str = "masks"
    #: worker body of Re-propagate: ``refine_job(load, frames, labels, frame, progress=, cancel=, **options)``
    refine_job: Callable[..., Any]

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.result_layer: Optional[Labels] = None
        self.last_summary: Optional[dict] = None
        # per result layer, the undo records of its model runs (newest last)
        self._undo: "weakref.WeakKeyDictionary[Labels, List[FrameUndo]]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ controls
    def prompt_controls(self) -> list:
        """Prompts layer picker, "New prompt layer", object id, positive toggle."""
        self.prompts_combo = self.layer_picker("Prompts", Points)
        self.new_prompts_button = PushButton(text="New prompt layer")
        self.obj_spin = SpinBox(label="Object id", min=1, max=255, value=1)
        self.obj_spin.tooltip = "label value of the object the next clicks belong to"
        self.positive_check = CheckBox(text="Positive click (on the object)", value=True)
        self.positive_check.tooltip = "unchecked: the next clicks mark background (negative)"
        self.new_prompts_button.changed.connect(self.new_prompt_layer)
        for widget in (self.obj_spin, self.positive_check, self.prompts_combo):
            widget.changed.connect(self._apply_defaults)
        return [self.prompts_combo, self.new_prompts_button, self.obj_spin, self.positive_check]

    def tracking_controls(self) -> None:
        """Direction, frame range, device, masks layer; Track, Re-propagate,
        checked frames, undo, Cancel (the subclass places them)."""
        self.direction_combo = ComboBox(label="Direction", choices=["both", "forward", "backward"], value="both")
        self.frames = FrameRange()
        self.start_spin, self.end_spin = self.frames.start_spin, self.frames.end_spin
        self.device_combo = self.device_picker()
        self.result_combo = ComboBox(label="Masks layer", choices=result_choices(self.viewer, self.STATE_KEY))
        self.result_combo.tooltip = ("where Track writes and what Re-propagate refines; (new layer): the video's "
                                     "last result layer, else a new one")
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

    def model_loader(self) -> Callable[[], Any]:
        """A callable the worker calls to get the chosen model (cached)."""
        raise NotImplementedError

    def track(self, *_: Any) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ prompts
    def new_prompt_layer(self, *_: Any) -> Points:
        """A Points layer for clicks: features obj_id / positive, coloured
        green (object) / magenta (background), in add mode."""
        video = self.video_combo.value
        name = f"{video.name} prompts" if video is not None else f"{self.TITLE} prompts"
        layer = self.add_points(
            video, name, features={"obj_id": np.zeros(0, int), "positive": np.zeros(0, bool)}, select=True,
            face_color="positive", face_color_cycle=POSITIVE_COLORS,
            size=max(4.0, (video_shape(video)[2] / 80) if video is not None else 8.0),
        )
        return self.use_prompt_layer(layer, self.prompts_combo, "add")

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
        return [self.prompts_combo.value]

    def _apply_defaults(self, *_: Any) -> None:
        for layer in self.prompt_layers():
            if layer is None:
                continue
            defaults = {}
            if "obj_id" in layer.features:
                defaults["obj_id"] = int(self.obj_spin.value)
            if isinstance(layer, Points) and "positive" in layer.features:
                defaults["positive"] = bool(self.positive_check.value)
            if defaults:
                layer.feature_defaults = defaults

    # ------------------------------------------------------------------ masks layer
    def current_frame(self, layer) -> int:
        """The frame shown, in ``layer``'s frame index (layers may be scaled in time)."""
        return frame_of(self.viewer, layer)

    def _video(self) -> Optional[Image]:
        video = self.video_combo.value
        if video is None:
            show_error(f"{self.TITLE}: {NO_VIDEO}")
        return video

    def _new_labels(self, video: Image, shape, name: str, status: str, prompts: list) -> Labels:
        # a sparse on-disk stack: creating it touches no frame (no stall, no RAM);
        # the prompt layer stays selected: clicks keep landing there
        return self.add_labels(
            video, new_label_stack(shape, name=name, max_ram_mb=0), name,
            metadata={self.STATE_KEY: {"status": status, "prompts": prompts, "video": video_key(video)},
                      VALIDATED_KEY: []},
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
                    and layer.metadata[self.STATE_KEY].get("video") == key):
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
            layer.metadata[self.STATE_KEY] = {**(layer.metadata.get(self.STATE_KEY) or {}), "status": status,
                                              "prompts": prompts, "video": video_key(video)}
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

    def start_tracking(self, video: Image, prompts: list, job, args: tuple, frame_range, description: str) -> Labels:
        """Track into the video's masks layer: ``job(load, *args,
        direction=, frame_range=, sink=)`` writes each frame through a
        ``StackWriter`` that keeps checked frames and records an undo."""
        layer, created = self.result_for(video, "running", prompts)
        protect = frames_of(layer.metadata.get(VALIDATED_KEY))
        undo = self._new_undo(layer)
        self.status.value = "tracking…"
        self._start(job, args, {"direction": self.direction_combo.value, "frame_range": frame_range,
                                "sink": StackWriter(layer.data, protect=protect, undo=undo)},
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
            show_error(f"{self.TITLE}: {exc}")
            return
        if layer is None:
            layer = self._existing_result(video, (n, h, w))
        if layer is None or tuple(layer.data.shape) != (n, h, w):
            show_error(f"{self.TITLE}: choose the masks layer to refine ('Masks layer'): a labels layer of the "
                       f"video's size {n} x {h} x {w} (Track first)")
            return
        t = self.current_frame(layer)
        try:
            frame_range = self.frames.resolve(n, include=t)  # the range always holds the frame it starts from
        except SurgsegError as exc:
            show_error(f"{self.TITLE}: {exc}")
            return
        meta = layer.metadata.get(self.STATE_KEY) or {}
        here = {int(v) for v in np.unique(np.asarray(layer.data[t])) if v != 0}
        # objects tracked before but erased on this frame are told "absent here"
        obj_ids = sorted(here | {int(i) for i in meta.get("obj_ids", [])})
        if not obj_ids:
            show_error(f"{self.TITLE}: frame {t} has no masks to propagate: paint the object(s) on it first")
            return
        self.result_layer = layer
        self.result_combo.value = layer
        undo = self._new_undo(layer)
        direction = self.direction_combo.value
        layer.metadata[self.STATE_KEY] = {**meta, "status": "running"}
        self.status.value = f"re-propagating from frame {t} ({direction})…"
        self._start(type(self).refine_job, (video.data, layer.data, t),
                    {"direction": direction, "validated": layer.metadata.get(VALIDATED_KEY) or [],
                     "obj_ids": obj_ids, "frame_range": frame_range, "undo": undo},
                    layer, self._on_refined, f"Re-propagating ({self.TITLE})")

    # ------------------------------------------------------------------ checked frames, undo
    def mark_checked(self, *, checked: bool = True, span: bool = False) -> Optional[list]:
        """Mark (or unmark) the frame shown, or the First..Last frames, as
        checked in the masks layer's metadata (autosaved with it)."""
        layer = self.result_combo.value
        if layer is None:
            show_error(f"{self.TITLE}: choose the masks layer whose frames you checked ('Masks layer')")
            return None
        n = layer.data.shape[0]
        if span:
            last = int(self.end_spin.value)
            try:  # a Last beyond the layer's end means its end
                first, last = resolve_range(int(self.start_spin.value), last if last < n else -1, n)
            except SurgsegError as exc:
                show_error(f"{self.TITLE}: {exc}")
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
            layer.metadata[self.STATE_KEY] = {**(layer.metadata.get(self.STATE_KEY) or {}), "status": "completed",
                                              "obj_ids": sorted(int(i) for i in obj_ids)}
            self.set_provenance(layer, summary["provenance"])
            self._drop_empty_undo(layer)
            layer.refresh()

    def _on_done(self, summary: dict) -> None:
        self._finish(summary, summary["obj_ids"])
        self._report(f"tracked object(s) {summary['obj_ids']} over {summary['frames_written']} frame(s)", summary)

    def _on_refined(self, summary: dict) -> None:
        layer = self.result_layer
        before = ((layer.metadata.get(self.STATE_KEY) or {}).get("obj_ids", []) if layer is not None else [])
        self._finish(summary, set(before) | set(summary["obj_ids"]))
        lo, hi = summary["frame_range"]
        kept = summary["frames_protected"]
        msg = (f"re-propagated object(s) {summary['obj_ids']} from frame {summary['frame']} over frames {lo}..{hi}: "
               f"{len(summary['frames_changed'])} frame(s) changed"
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
        layer.metadata[self.STATE_KEY] = {**layer.metadata.get(self.STATE_KEY, {}), "status": status,
                                          "error": str(exc)}
        self._drop_empty_undo(layer)  # frames written before the stop stay undoable
        layer.refresh()
        self.status.value = f"{status}: frames shown are complete" if status == "cancelled" else f"failed: {exc}"

    def _discard(self, layer: Labels) -> None:
        from .results import discard_layers

        discard_layers(self.viewer, [layer])
        self.result_layer = None if self.result_layer is layer else self.result_layer
