"""Dock widget "Track with SAM2": clicks on a video -> masks on every frame
(core: :func:`surgseg_core.sam2_engine.track.track_video`, also ``surgseg track``).

Prompts are a Points layer with features ``obj_id`` and ``positive``; the
object id spin box and the positive/negative toggle set the layer's
``feature_defaults``, so each new click gets them. Tracking runs in a worker
that writes each frame's label map into the array behind a Labels layer (a
sparse on-disk stack, created instantly); tracking the same video again
reuses its result layer; the widget refreshes the layer on the GUI thread as
progress arrives.

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
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.outputs import ArrayWriter
from surgseg_core.sam2_engine.refine import (
    VALIDATED_KEY, FrameUndo, StackWriter, frames_of, mark_validated, repropagate,
)
from surgseg_core.sam2_engine.session import ClickSession
from surgseg_core.sam2_engine.track import load_tracking_model, preview_frame, prompts_from_points_table, track_video

from .._autosave import request_save, watch_layer
from .._edits import record_edits
from .._layers import frame_of
from .._workers import run_in_worker
from ._result_layers import add_result_layer, discard_layers
from ._status import StatusLabel
from .corrections import connect_layer_refresh, layer_choices, source_video_of

TITLE = "Track with SAM2"
RANDOM_TINY = "random tiny (testing)"
POSITIVE_COLORS = {True: "lime", False: "magenta"}
MAX_UNDO_RUNS = 10  # per layer; each keeps only the frames its run changed


def model_choices(_widget=None) -> List[Tuple[str, Tuple[str, Optional[str]]]]:
    """(label, (model, checkpoint)) for official and registered SAM2 weights,
    plus a random tiny model for trying the workflow without weights."""
    from surgseg_core.weights import list_weights

    items: List[Tuple[str, Tuple[str, Optional[str]]]] = []
    try:
        entries = list_weights(method="sam2")
    except SurgsegError as exc:  # unreadable registry: still usable with random weights
        show_warning(f"{TITLE}: {exc}")
        entries = []
    for e in entries:
        if e.source == "official":
            label = e.name if e.present else f"{e.name} (not downloaded)"
            items.append((label, (e.name, e.name)))
        else:
            items.append((f"{e.name} (fine-tuned)", (e.name, None)))
    items.append((RANDOM_TINY, (TINY_CONFIG, None)))
    return items


def device_choices() -> List[str]:
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def video_shape(layer) -> Tuple[int, int, int]:
    """(T, H, W) of a video Image layer (RGB or grey)."""
    shape = tuple(layer.data.shape)
    if layer.rgb and len(shape) == 4:
        return shape[0], shape[1], shape[2]
    if not layer.rgb and len(shape) == 3:
        return shape
    raise SurgsegError(f"layer {layer.name!r} with shape {shape} is not a video (T, H, W[, 3])")


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


def _cached_model(cache: dict, model: str, checkpoint: Optional[str], device: Optional[str]):
    """The model built once per (model, checkpoint, device) and kept in
    ``cache`` (previews and tracking runs then skip rebuilding and reloading
    the weights)."""
    key = (model, checkpoint, device)
    net = cache.get(key)
    if net is None:
        net = load_tracking_model(model, checkpoint, device=device)
        cache.clear()  # one model in memory at a time
        cache[key] = net
    return net


def _track_job(cache: dict, model: str, checkpoint: Optional[str], device: Optional[str], frames, prompts, *,
               progress=None, cancel=None, **kwargs):
    """Worker body: ``track_video`` with the cached model."""
    net = _cached_model(cache, model, checkpoint, device)
    return track_video(frames, prompts, model=net, progress=progress, cancel=cancel, **kwargs)


def _preview_job(session: ClickSession, cache: dict, model: str, checkpoint: Optional[str], device: Optional[str],
                 frames, prompts, *, frame_range, sink, progress=None, cancel=None, **_):
    """Worker body of a preview: the session keeps the engine (and the frames
    it encoded) across previews, so a second click on a frame only decodes."""
    return preview_frame(frames, prompts, frame_range[0], model=_cached_model(cache, model, checkpoint, device),
                         session=session, sink=sink, cancel=cancel)


def _refine_job(cache: dict, model: str, checkpoint: Optional[str], device: Optional[str], frames, labels,
                frame: int, *, progress=None, cancel=None, **kwargs):
    """Worker body: ``repropagate`` with the cached model."""
    net = _cached_model(cache, model, checkpoint, device)
    return repropagate(frames, labels, frame, model=net, progress=progress, cancel=cancel, **kwargs)


def video_key(video) -> str:
    """What identifies a video across layers: its file, else the layer name."""
    return source_video_of(video) or video.name


def is_result_layer(layer) -> bool:
    """A tracking result (not a preview) made by this widget."""
    meta = (getattr(layer, "metadata", None) or {}).get("sam2_tracking")
    return isinstance(layer, Labels) and isinstance(meta, dict) and meta.get("status") != "preview"


def result_choices(viewer):
    """Choices for the result-layer combo: a new layer, or any 3-D Labels
    layer but previews (a user's own label stack can be refined too)."""

    def choices(_widget=None):
        items = [
            (layer.name, layer) for layer in viewer.layers
            if isinstance(layer, Labels) and layer.ndim == 3
            and ((layer.metadata or {}).get("sam2_tracking") or {}).get("status") != "preview"
        ]
        return [("(new layer)", None)] + items

    return choices


class Sam2TrackWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.cancel_token = None
        self.result_layer: Optional[Labels] = None
        self.preview_layer: Optional[Labels] = None
        self._model_cache: dict = {}
        self._click_session = ClickSession()
        self.last_summary: Optional[dict] = None
        v = napari_viewer

        self.video_combo = ComboBox(label="Video", choices=layer_choices(v, Image))
        self.prompts_combo = ComboBox(label="Prompts", choices=layer_choices(v, Points))
        self.new_prompts_button = PushButton(text="New prompt layer")
        self.obj_spin = SpinBox(label="Object id", min=1, max=255, value=1)
        self.obj_spin.tooltip = "label value of the object the next clicks belong to"
        self.positive_check = CheckBox(text="Positive click (on the object)", value=True)
        self.positive_check.tooltip = "unchecked: the next clicks mark background (negative)"
        self.model_combo = ComboBox(label="Model", choices=model_choices)
        self.direction_combo = ComboBox(label="Direction", choices=["both", "forward", "backward"], value="both")
        self.start_spin = SpinBox(label="First frame", min=0, max=10**7, value=0)
        self.end_spin = SpinBox(label="Last frame", min=-1, max=10**7, value=-1)
        self.end_spin.tooltip = "-1: to the end of the video"
        self.device_combo = ComboBox(label="Device", choices=device_choices(), value="auto")
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
        self.status = StatusLabel()
        self.extend([
            self.video_combo, self.prompts_combo, self.new_prompts_button, self.obj_spin, self.positive_check,
            self.model_combo, self.direction_combo, self.start_spin, self.end_spin, self.device_combo,
            self.result_combo, self.preview_button, self.track_button, self.repropagate_button,
            self.check_button, self.check_span_button, self.uncheck_button, self.checked_label,
            self.undo_button, self.cancel_button, self.status,
        ])
        # per result layer, the undo records of its model runs (newest last)
        self._undo: "weakref.WeakKeyDictionary[Labels, List[FrameUndo]]" = weakref.WeakKeyDictionary()
        self.new_prompts_button.changed.connect(self.new_prompt_layer)
        self.obj_spin.changed.connect(self._apply_defaults)
        self.positive_check.changed.connect(self._apply_defaults)
        self.prompts_combo.changed.connect(self._apply_defaults)
        self.preview_button.changed.connect(self.preview)
        self.track_button.changed.connect(self.track)
        self.repropagate_button.changed.connect(self.repropagate)
        self.check_button.changed.connect(lambda *_: self.mark_checked())
        self.check_span_button.changed.connect(lambda *_: self.mark_checked(span=True))
        self.uncheck_button.changed.connect(lambda *_: self.mark_checked(checked=False))
        self.undo_button.changed.connect(self.undo_last_run)
        self.cancel_button.changed.connect(self.cancel)
        self.result_combo.changed.connect(self._update_result_state)
        connect_layer_refresh(v, self)

    # ------------------------------------------------------------------ prompts
    def new_prompt_layer(self, *_: Any) -> Points:
        """A Points layer for clicks: features obj_id / positive, coloured
        green (object) / magenta (background), in add mode."""
        video = self.video_combo.value
        name = f"{video.name} prompts" if video is not None else "SAM2 prompts"
        layer = Points(
            np.zeros((0, 3)),
            ndim=3,
            name=name,
            features={"obj_id": np.zeros(0, int), "positive": np.zeros(0, bool)},
            face_color="positive",
            face_color_cycle=POSITIVE_COLORS,
            size=max(4.0, (video_shape(video)[2] / 80) if video is not None else 8.0),
            axis_labels=("t", "y", "x"),
        )
        if video is not None:
            layer.scale = video.scale[:3]
            layer.translate = video.translate[:3]
        self.viewer.add_layer(layer)
        watch_layer(layer, source_video_of(video) if video is not None else None)
        record_edits(layer, fresh=True)
        self.reset_choices()
        self.prompts_combo.value = layer
        self._apply_defaults()
        layer.mode = "add"
        return layer

    def _apply_defaults(self, *_: Any) -> None:
        layer = self.prompts_combo.value
        if layer is None:
            return
        defaults = {}
        if "obj_id" in layer.features:
            defaults["obj_id"] = int(self.obj_spin.value)
        if "positive" in layer.features:
            defaults["positive"] = bool(self.positive_check.value)
        if defaults:
            layer.feature_defaults = defaults

    # ------------------------------------------------------------------ tracking
    def _inputs(self):
        """(video layer, prompts, (T, H, W)) or None after telling the user what is missing."""
        video, points = self.video_combo.value, self.prompts_combo.value
        if video is None:
            show_error(f"{TITLE}: no video layer: open a video first (File > Open or 'Load surgical video')")
            return None
        if points is None or len(points.data) == 0:
            show_error(f"{TITLE}: no prompts: click on the object in a prompt layer ('New prompt layer') first")
            return None
        try:
            return video, prompts_from_layer(points, video), video_shape(video)
        except SurgsegError as exc:
            show_error(f"{TITLE}: {exc}")
            return None

    def _new_labels(self, video: Image, shape, name: str, status: str, prompts: list) -> Labels:
        # a sparse on-disk stack: creating it touches no frame (no stall, no RAM)
        labels = Labels(
            new_label_stack(shape, name=name, max_ram_mb=0), name=name,
            scale=video.scale[:3], translate=video.translate[:3], axis_labels=("t", "y", "x"),
            metadata={"sam2_tracking": {"status": status, "prompts": prompts, "video": video_key(video)},
                      VALIDATED_KEY: []},
        )
        add_result_layer(self.viewer, labels)  # the prompt layer stays selected: clicks keep landing there
        watch_layer(labels, source_video_of(video))
        record_edits(labels, fresh=True)  # brush corrections, not model output, are what gets exported
        return labels

    def _existing_result(self, video: Image, shape) -> Optional[Labels]:
        """The layer to track into: the one chosen if it fits the video, else
        the video's latest result layer (no stacking of layers), else None."""
        chosen = self.result_combo.value
        if chosen is not None and chosen in self.viewer.layers and tuple(chosen.data.shape) == tuple(shape):
            return chosen
        key = video_key(video)
        for layer in reversed(list(self.viewer.layers)):
            if (is_result_layer(layer) and tuple(layer.data.shape) == tuple(shape)
                    and layer.metadata["sam2_tracking"].get("video") == key):
                return layer
        return None

    def current_frame(self, layer) -> int:
        """The frame shown, in ``layer``'s frame index (layers may be scaled in time)."""
        return frame_of(self.viewer, layer)

    def _busy(self, busy: bool) -> None:
        for button in (self.track_button, self.preview_button, self.repropagate_button, self.check_button,
                       self.check_span_button, self.uncheck_button):
            button.enabled = not busy
        self.cancel_button.enabled = busy
        self.undo_button.enabled = not busy and bool(self._runs(self.result_combo.value))

    def _start(self, job, args: tuple, kwargs: dict, labels: Labels, on_done, description: str,
               created: bool = False) -> None:
        """Run a core job in a worker that writes into ``labels``' array (one
        code path for every button); ``created``: ``labels`` is new, so a
        failure removes it."""
        model, checkpoint = self.model_combo.value
        self.last_summary = None
        self._busy(True)
        # the worker writes into the array; napari only reads it on
        # refresh(), which happens here on the GUI thread
        self.worker, self.cancel_token = run_in_worker(
            job,
            self._model_cache,
            model,
            checkpoint,
            None if self.device_combo.value == "auto" else self.device_combo.value,
            *args,
            on_done=on_done,
            description=description,
            owner=self,
            progress_unit="frames",
            **kwargs,
        )
        self.worker.yielded.connect(lambda _update: labels.refresh())
        self.worker.errored.connect(lambda exc: self._on_stopped(labels, exc, created))
        self.worker.finished.connect(self._on_finished)

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
        end = n - 1 if self.end_spin.value < 0 else int(self.end_spin.value)
        frame_range = (int(self.start_spin.value), end)
        if not 0 <= frame_range[0] <= frame_range[1] < n:
            show_error(f"{TITLE}: frame range {frame_range[0]}..{frame_range[1]} is outside the video (0..{n - 1})")
            return
        layer = self._existing_result(video, (n, h, w))
        created = layer is None
        if created:
            layer = self._new_labels(video, (n, h, w), f"{video.name} SAM2 masks", "running", prompts)
        else:
            layer.metadata["sam2_tracking"] = {**(layer.metadata.get("sam2_tracking") or {}), "status": "running",
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
        end = n - 1 if self.end_spin.value < 0 else int(self.end_spin.value)
        first = min(int(self.start_spin.value), t)
        frame_range = (first, max(end, t))
        meta = layer.metadata.get("sam2_tracking") or {}
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
        layer.metadata["sam2_tracking"] = {**meta, "status": "running"}
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
            first = int(self.start_spin.value)
            last = n - 1 if self.end_spin.value < 0 else min(int(self.end_spin.value), n - 1)
            if first > last:
                show_error(f"{TITLE}: First frame {first} is after Last frame {last}")
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
        self.undo_button.enabled = not self.cancel_button.enabled and bool(self._runs(layer))

    def preview(self, *_: Any) -> None:
        """Segment the frame shown from the clicks on that frame only, into a
        "SAM2 preview" layer (reused): a quick check before tracking."""
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
        layer.metadata["sam2_tracking"] = {"status": "preview", "prompts": here}
        self.status.value = f"segmenting frame {t}…"

        def done(summary: dict) -> None:
            self.last_summary = summary
            layer.metadata["sam2_provenance"] = summary["provenance"]
            layer.refresh()
            note = " (RANDOM weights: not a segmentation)" if summary["random_weights"] else ""
            self.status.value = f"preview of frame {t}: object(s) {summary['obj_ids']}{note}"

        self._start(functools.partial(_preview_job, self._click_session), (video.data, here),
                    {"frame_range": (t, t), "sink": ArrayWriter(layer.data)},
                    layer, done, "SAM2 preview", created)

    def cancel(self, *_: Any) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.value = "cancelling…"

    def _on_done(self, summary: dict) -> None:
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            layer.metadata["sam2_tracking"] = {**(layer.metadata.get("sam2_tracking") or {}), "status": "completed",
                                               "obj_ids": list(summary["obj_ids"])}
            layer.metadata["sam2_provenance"] = summary["provenance"]
            self._drop_empty_undo(layer)
            layer.refresh()
        msg = f"tracked object(s) {summary['obj_ids']} over {summary['frames_written']} frame(s)"
        self.status.value = msg
        if summary["random_weights"]:
            show_warning(f"{TITLE}: {msg} with RANDOM SAM2 weights: the masks are not segmentations")
        else:
            show_info(f"{TITLE}: {msg}")

    def _on_refined(self, summary: dict) -> None:
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            meta = layer.metadata.get("sam2_tracking") or {}
            ids = sorted(set(meta.get("obj_ids", [])) | set(summary["obj_ids"]))
            layer.metadata["sam2_tracking"] = {**meta, "status": "completed", "obj_ids": ids}
            layer.metadata["sam2_provenance"] = summary["provenance"]
            self._drop_empty_undo(layer)
            layer.refresh()
        lo, hi = summary["frame_range"]
        kept = summary["frames_protected"]
        msg = (f"re-propagated object(s) {summary['obj_ids']} from frame {summary['frame']} over frames {lo}..{hi}: "
               f"{len(summary['frames_changed'])} frame(s) changed"
               + (f", {len(kept)} checked frame(s) kept" if kept else ""))
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
        layer.metadata["sam2_tracking"] = {**layer.metadata.get("sam2_tracking", {}), "status": status, "error": str(exc)}
        self._drop_empty_undo(layer)  # frames written before the stop stay undoable
        layer.refresh()
        self.status.value = f"{status}: frames shown are complete" if status == "cancelled" else f"failed: {exc}"

    def _on_finished(self) -> None:
        self.cancel_token = None
        self._busy(False)
