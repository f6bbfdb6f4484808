"""Dock widget "Clicks (RP-SAM2)": click on each instrument, see where
RP-SAM2's shift block moves the click and the mask at once, then "Track
through video" (core: :class:`surgseg_core.methods.rpsam2.clicks.ClickRefiner`).

Clicks go into a Points layer (features ``obj_id`` / ``positive``; "New
object" gives the next instrument the next id). Each click re-segments the
frame shown in a worker: the first click on a frame runs the image encoder
(status "encoding frame …"), later clicks there run only the block and SAM2's
decoder; moving to another frame encodes it in the background once a model
is loaded. The frame's masks go into the masks layer (its other objects'
pixels stay), the refined points into a Points layer, and a line from each
click to its refined point into a Shapes layer. "Undo last click" removes
the newest click and re-segments its frame.

"Track through video" sends the frame's clicks, refined by the same hook, to
the streaming engine and tracks every object into the masks layer;
corrections, checked frames, re-propagation and undo of a run are those of
every tracking widget (``widgets.base.TrackingWidget``).
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Dict, List, Optional, Set

import numpy as np
from magicgui.widgets import PushButton
from napari.layers import Image, Labels, Points, Shapes

from surgseg_core.errors import SurgsegError
from surgseg_core.methods.rpsam2.clicks import ClickRefiner, load_click_model, refined_points

from .._autosave import request_save
from .base import ModelCache, TrackingWidget, device_value, frame_of, show_frame, video_shape
from .base.tracking import POSITIVE_COLORS, prompts_from_layer

TITLE = "Clicks (RP-SAM2)"
RANDOM_TINY = "random tiny (testing)"
DEMO_WEIGHTS = "surgseg-demo-rpsam2"
STATE_KEY = "rpsam2_clicks"
LINE_COLOR = "yellow"


def _refiner(cache: ModelCache, weights: Optional[str], device: Optional[str]) -> ClickRefiner:
    """The refiner (model + its click session) built once per (weights,
    device): its frames stay encoded while the model is kept."""
    return cache.get(("rpsam2", weights, device), lambda: ClickRefiner(load_click_model(weights, device=device)))


def _click_job(load: Callable, frames, frame: int, prompts: list, *, progress=None, cancel=None) -> dict:
    """Worker body of a click: the frame's masks and refined clicks (an
    encode only, when no click is left on the frame)."""
    refiner = load()
    if not prompts:
        refiner.encode(frames, frame, cancel=cancel)
        return {"frame": frame, "labels": None, "obj_ids": [], "refined": [], "random_weights": refiner.random_weights}
    return refiner.click(frames, frame, prompts, cancel=cancel)


def _encode_job(load: Callable, frames, frame: int, *, progress=None, cancel=None) -> dict:
    return {"frame": frame, "encoded": load().encode(frames, frame, cancel=cancel)}


def _track_job(load: Callable, frames, frame: int, prompts: list, *, progress=None, cancel=None, **kwargs) -> dict:
    return load().track(frames, frame, prompts, progress=progress, cancel=cancel, **kwargs)


def _refine_job(load: Callable, frames, labels, frame: int, *, progress=None, cancel=None, **kwargs) -> dict:
    return load().repropagate(frames, labels, frame, progress=progress, cancel=cancel, **kwargs)


class RPSam2ClicksWidget(TrackingWidget):
    METHOD = "rpsam2"
    TITLE = TITLE
    STATE_KEY = STATE_KEY
    RESULT_NAME = "RP-SAM2 masks"
    TRACK_TEXT = "Track through video"
    refine_job = staticmethod(_refine_job)

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.refined_layer: Optional[Points] = None
        self.lines_layer: Optional[Shapes] = None
        self._refined: Dict[int, List[dict]] = {}  # frame -> refined_points rows of its last click
        # per masks layer and frame, the objects the last click result painted there
        self._painted: "weakref.WeakKeyDictionary[Labels, Dict[int, Set[int]]]" = weakref.WeakKeyDictionary()
        self._watched: Optional[Points] = None
        self._pending: Optional[tuple] = None  # ("click" | "encode", frame): run when the current run ends
        self._muted = False

        self.video_combo = self.video_picker()
        prompt_controls = self.prompt_controls()
        self.obj_spin.tooltip = "label value of the instrument the next clicks belong to (one id per instrument)"
        self.new_object_button = PushButton(text="New object")
        self.new_object_button.tooltip = "the next clicks start the next instrument (the next free object id)"
        self.undo_click_button = PushButton(text="Undo last click")
        self.weights_combo = self.weights_picker("Weights", item=lambda e: (e.name, e.name),
                                                 after=[(RANDOM_TINY, None)])
        self.weights_combo.tooltip = "RP-SAM2 weights (registered, method rpsam2); random tiny: for testing only"
        self.tracking_controls()
        self.track_button.tooltip = ("the clicks of the frame shown, refined, go to SAM2's video engine: every "
                                     "object is tracked in the chosen direction into the masks layer")
        self.layout([*prompt_controls, self.new_object_button, self.undo_click_button], self.weights_combo)
        self.runs = self.run_control([])
        self._default_weights()
        self.new_object_button.changed.connect(self.new_object)
        self.undo_click_button.changed.connect(self.undo_click)
        self.prompts_combo.changed.connect(self._watch_points)
        steps = napari_viewer.dims.events.current_step
        steps.connect(self._frame_changed)
        # a closed widget must not hear the time slider (its Qt widgets are gone); the emitter is held here
        # because the viewer may be torn down first (then it has no .dims)
        frame_changed = self._frame_changed

        def stop_hearing(*_) -> None:
            try:
                steps.disconnect(frame_changed)
            except (AttributeError, RuntimeError):  # the viewer's emitter was torn down first
                pass

        self.native.destroyed.connect(stop_hearing)
        self._watch_points()

    def _default_weights(self) -> None:
        names = [value for value in self.weights_combo.choices]
        if DEMO_WEIGHTS in names:
            self.weights_combo.value = DEMO_WEIGHTS

    def model_loader(self) -> Callable[[], ClickRefiner]:
        return functools.partial(_refiner, self.models, self.weights_combo.value,
                                 device_value(self.device_combo.value))

    def _model_loaded(self) -> bool:
        return ("rpsam2", self.weights_combo.value, device_value(self.device_combo.value)) in self.models

    # ------------------------------------------------------------------ clicks
    def _watch_points(self, *_: Any) -> None:
        """Re-segment when the chosen points layer changes (click, move, delete)."""
        layer = self.prompts_combo.value
        if layer is self._watched:
            return
        if self._watched is not None:
            self._watched.events.data.disconnect(self._points_changed)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._points_changed)

    def _points_changed(self, event) -> None:
        if not self._muted and str(getattr(event, "action", "")) in ("added", "removed", "changed"):
            video = self.video_combo.value
            if video is not None:
                self.request("click", frame_of(self.viewer, video))

    def _frame_changed(self, *_: Any) -> None:
        """Another frame shown: encode it in the background (once a model is loaded)."""
        video = self.video_combo.value
        if video is not None and self._model_loaded():
            self.request("encode", frame_of(self.viewer, video))

    def request(self, kind: str, frame: int) -> None:
        """Segment (``"click"``) or encode a frame now, or when the run in
        progress ends (the latest request wins; a click beats an encode)."""
        if self._pending is not None and self._pending[0] == "click" and kind == "encode":
            return
        self._pending = (kind, int(frame))
        self._pump()

    def _pump(self) -> None:
        if self.runs.busy or self._pending is None:
            return
        kind, t = self._pending
        self._pending = None
        video = self.video_combo.value
        if video is None:
            return
        if kind == "encode":
            if self._model_loaded() and not self._refiner_now().encoded(video.data, t):
                self.status.value = f"encoding frame {t}…"
                self.runs.start(_encode_job, self.model_loader(), video.data, t, description=f"{TITLE}: encoding",
                                on_done=lambda out: self._encoded(out["frame"]))
            return
        try:
            prompts = [p for p in self.clicks(video) if p["frame"] == t]
        except SurgsegError as exc:
            self.error(str(exc))
            return
        encoded = self._model_loaded() and self._refiner_now().encoded(video.data, t)
        self.status.value = f"segmenting frame {t}…" if encoded else f"encoding frame {t}…"
        self.runs.start(_click_job, self.model_loader(), video.data, t, prompts, description=f"{TITLE}: clicks",
                        on_done=functools.partial(self._clicked, video, prompts))

    def _refiner_now(self) -> ClickRefiner:
        return self.model_loader()()  # cached: returns at once

    def _run_ended(self) -> None:
        super()._run_ended()
        self._pump()

    def _encoded(self, frame: int) -> None:
        if self.status.value.startswith("encoding"):
            self.status.value = f"frame {frame} encoded: clicks there run the block and the decoder only"

    def clicks(self, video: Image) -> list:
        """The clicks of the chosen points layer as prompts (video pixels)."""
        points = self.prompts_combo.value
        return prompts_from_layer(points, video) if points is not None and len(points.data) else []

    def _clicked(self, video: Image, prompts: list, out: dict) -> None:
        """A click result: the frame's masks into the masks layer, the refined
        points and the lines to them into their layers."""
        t = out["frame"]
        layer, _ = self.result_for(video, "clicks", self._all_clicks(video))
        painted = self._painted.setdefault(layer, {})
        frame = np.array(layer.data[t])
        clear = painted.get(t, set()) | set(out["obj_ids"])
        frame[np.isin(frame, sorted(clear))] = 0
        if out["labels"] is not None:
            frame = np.where(out["labels"] > 0, out["labels"], frame)
        layer.data[t] = frame
        painted[t] = set(out["obj_ids"])
        if "provenance" in out:
            self.set_provenance(layer, out["provenance"])
        layer.refresh()
        request_save(layer)
        self._refined[t] = refined_points(out) if out["refined"] else []
        self._show_refined(video)
        note = " (RANDOM weights: not a segmentation)" if out["random_weights"] else ""
        self.status.value = (f"frame {t}: object(s) {out['obj_ids']}{note}" if out["obj_ids"]
                             else f"frame {t}: no clicks left")

    def _all_clicks(self, video: Image) -> list:
        try:
            return self.clicks(video)
        except SurgsegError:
            return []

    def _show_refined(self, video: Image) -> None:
        """Refined points (t, y, x) and lines click -> refined point of every frame."""
        rows = [(t, r) for t in sorted(self._refined) for r in self._refined[t]]
        pts = np.array([[t, r["refined"][1], r["refined"][0]] for t, r in rows], float).reshape(-1, 3)
        features = {"obj_id": np.array([r["obj_id"] for _, r in rows], int),
                    "positive": np.array([r["positive"] for _, r in rows], bool)}
        if self.refined_layer is None or self.refined_layer not in self.viewer.layers:
            self.refined_layer = self.add_points(
                video, f"{video.name} refined clicks", features=features, data=pts, symbol="cross",
                face_color="positive", face_color_cycle=POSITIVE_COLORS, record=False,
                size=max(4.0, video_shape(video)[2] / 80))
        else:
            self.refined_layer.data = pts
            self.refined_layer.features = features
        lines = [np.array([[t, r["click"][1], r["click"][0]], [t, r["refined"][1], r["refined"][0]]], float)
                 for t, r in rows]
        if self.lines_layer is None or self.lines_layer not in self.viewer.layers:
            self.lines_layer = self.add_shapes(video, f"{video.name} click shifts", edge_color=LINE_COLOR,
                                               edge_width=max(1.0, video_shape(video)[2] / 400))
        self.lines_layer.data = []
        if lines:
            self.lines_layer.add_lines(lines, edge_color=LINE_COLOR)

    def new_object(self, *_: Any) -> int:
        """The next clicks start a new instrument: the next free object id, positive."""
        points, layer = self.prompts_combo.value, self.result_combo.value
        used = {int(i) for i in points.features["obj_id"]} if points is not None and "obj_id" in points.features \
            else set()
        if layer is not None:
            used |= {int(i) for i in (layer.metadata.get(STATE_KEY) or {}).get("obj_ids", [])}
        self.obj_spin.value = min(max(used, default=0) + 1, 255)
        self.positive_check.value = True
        self.status.value = f"next clicks: object {self.obj_spin.value}"
        return int(self.obj_spin.value)

    def undo_click(self, *_: Any) -> Optional[int]:
        """Remove the newest click and re-segment its frame (shown)."""
        points, video = self.prompts_combo.value, self.video_combo.value
        if points is None or video is None or not len(points.data):
            self.status.value = "no click to undo"
            return None
        t = int(round(float(np.asarray(video.world_to_data(points.data_to_world(points.data[-1])))[0])))
        self._muted = True
        try:
            points.selected_data = {len(points.data) - 1}
            points.remove_selected()
        finally:
            self._muted = False
        show_frame(self.viewer, video, t)
        self.request("click", t)
        return t

    # ------------------------------------------------------------------ tracking
    def track(self, *_: Any) -> None:
        """Track every object clicked on the frame shown through the video."""
        video = self._video()
        if video is None:
            return
        try:
            n, _, _ = video_shape(video)
            t = frame_of(self.viewer, video)
            prompts = [p for p in self.clicks(video) if p["frame"] == t]
            if not prompts:
                raise SurgsegError(f"no clicks on frame {t}: click on each instrument there first "
                                   "('New prompt layer', then 'New object' for the next instrument)")
            frame_range = self.frames.resolve(n, include=t)
        except SurgsegError as exc:
            self.error(str(exc))
            return
        self.start_tracking(video, prompts, _track_job, (video.data, t, prompts), frame_range,
                            "Tracking with RP-SAM2")
