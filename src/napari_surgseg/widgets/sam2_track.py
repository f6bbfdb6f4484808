"""Dock widget "Track with SAM2": clicks on a video -> masks on every frame
(core: :func:`surgseg_core.sam2_engine.track.track_video`, also ``surgseg track``).

Prompts are a Points layer with features ``obj_id`` and ``positive``; the
object id spin box and the positive/negative toggle set the layer's
``feature_defaults``, so each new click gets them. Tracking runs in a worker
that writes each frame's label map into the numpy array behind a new Labels
layer; the widget refreshes the layer on the GUI thread as progress arrives.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.outputs import ArrayWriter
from surgseg_core.sam2_engine.track import load_tracking_model, prompts_from_points_table, track_video

from .._autosave import watch_layer
from .._workers import run_in_worker
from .corrections import connect_layer_refresh, layer_choices, source_video_of

TITLE = "Track with SAM2"
RANDOM_TINY = "random tiny (testing)"
POSITIVE_COLORS = {True: "lime", False: "magenta"}


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


def _track_job(cache: dict, model: str, checkpoint: Optional[str], device: Optional[str], frames, prompts, *,
               progress=None, cancel=None, **kwargs):
    """Worker body: ``track_video`` with the model built once per (model,
    checkpoint, device) and kept in ``cache`` (previews and tracking runs
    then skip rebuilding and reloading the weights)."""
    key = (model, checkpoint, device)
    net = cache.get(key)
    if net is None:
        net = load_tracking_model(model, checkpoint, device=device)
        cache.clear()  # one model in memory at a time
        cache[key] = net
    return track_video(frames, prompts, model=net, progress=progress, cancel=cancel, **kwargs)


class Sam2TrackWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.cancel_token = None
        self.result_layer: Optional[Labels] = None
        self.preview_layer: Optional[Labels] = None
        self._model_cache: dict = {}
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
        self.preview_button = PushButton(text="Preview current frame")
        self.preview_button.tooltip = "segment only the frame shown, from its own clicks (no tracking): check the clicks first"
        self.track_button = PushButton(text="Track")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([
            self.video_combo, self.prompts_combo, self.new_prompts_button, self.obj_spin, self.positive_check,
            self.model_combo, self.direction_combo, self.start_spin, self.end_spin, self.device_combo,
            self.preview_button, self.track_button, self.cancel_button, self.status,
        ])
        self.new_prompts_button.changed.connect(self.new_prompt_layer)
        self.obj_spin.changed.connect(self._apply_defaults)
        self.positive_check.changed.connect(self._apply_defaults)
        self.prompts_combo.changed.connect(self._apply_defaults)
        self.preview_button.changed.connect(self.preview)
        self.track_button.changed.connect(self.track)
        self.cancel_button.changed.connect(self.cancel)
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
        labels = Labels(
            new_label_stack(shape, name=name), name=name,
            scale=video.scale[:3], translate=video.translate[:3], axis_labels=("t", "y", "x"),
            metadata={"sam2_tracking": {"status": status, "prompts": prompts}},
        )
        self.viewer.add_layer(labels)
        watch_layer(labels, source_video_of(video))
        return labels

    def _start(self, video: Image, prompts: list, labels: Labels, frame_range, direction: str,
               on_done, description: str) -> None:
        """Run ``track_video`` in a worker, writing into ``labels``' array (one code path for both buttons)."""
        model, checkpoint = self.model_combo.value
        self.last_summary = None
        self.track_button.enabled = self.preview_button.enabled = False
        self.cancel_button.enabled = True
        # the worker writes into the numpy array; napari only reads it on
        # refresh(), which happens here on the GUI thread
        self.worker, self.cancel_token = run_in_worker(
            _track_job,
            self._model_cache,
            model,
            checkpoint,
            None if self.device_combo.value == "auto" else self.device_combo.value,
            video.data,
            prompts,
            direction=direction,
            frame_range=frame_range,
            sink=ArrayWriter(labels.data),
            on_done=on_done,
            description=description,
            owner=self,
            progress_unit="frames",
        )
        self.worker.yielded.connect(lambda _update: labels.refresh())
        self.worker.errored.connect(lambda exc: self._on_stopped(labels, exc))
        self.worker.finished.connect(self._on_finished)

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
        self.result_layer = self._new_labels(video, (n, h, w), f"{video.name} SAM2 masks", "running", prompts)
        self.status.value = "tracking…"
        self._start(video, prompts, self.result_layer, frame_range, self.direction_combo.value,
                    self._on_done, "Tracking with SAM2")

    def preview(self, *_: Any) -> None:
        """Segment the frame shown from the clicks on that frame only, into a
        "SAM2 preview" layer (reused): a quick check before tracking."""
        inputs = self._inputs()
        if inputs is None:
            return
        video, prompts, (n, h, w) = inputs
        t = int(self.viewer.dims.current_step[0])
        here = [p for p in prompts if int(p["frame"]) == t]
        if not here:
            frames = sorted({int(p["frame"]) for p in prompts})
            show_error(f"{TITLE}: no clicks on frame {t} (clicks are on frame(s) {frames}): go to one of them")
            return
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != (n, h, w):
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

        self._start(video, here, layer, (t, t), "forward", done, "SAM2 preview")

    def cancel(self, *_: Any) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.value = "cancelling…"

    def _on_done(self, summary: dict) -> None:
        self.last_summary = summary
        layer = self.result_layer
        if layer is not None:
            layer.metadata["sam2_tracking"] = {"status": "completed"}
            layer.metadata["sam2_provenance"] = summary["provenance"]
            layer.refresh()
        msg = f"tracked object(s) {summary['obj_ids']} over {summary['frames_written']} frame(s)"
        self.status.value = msg
        if summary["random_weights"]:
            show_warning(f"{TITLE}: {msg} with RANDOM SAM2 weights: the masks are not segmentations")
        else:
            show_info(f"{TITLE}: {msg}")

    def _on_stopped(self, layer: Labels, exc: BaseException) -> None:
        from surgseg_core.errors import Cancelled

        status = "cancelled" if isinstance(exc, Cancelled) else "failed"
        layer.metadata["sam2_tracking"] = {**layer.metadata.get("sam2_tracking", {}), "status": status, "error": str(exc)}
        layer.refresh()
        self.status.value = f"{status}: frames shown are complete" if status == "cancelled" else f"failed: {exc}"

    def _on_finished(self) -> None:
        self.track_button.enabled = self.preview_button.enabled = True
        self.cancel_button.enabled = False
        self.cancel_token = None
