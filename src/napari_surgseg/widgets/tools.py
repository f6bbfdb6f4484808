"""Tool landmarks widget: tool tips and anchors on the current frame, a
frame range or the whole video (in a worker, with progress and cancel).

Results, placed on the video: one Image layer per landmark heatmap (additive
blending, the type's colour; uint8 stacks at the model's resolution,
memory-mapped on disk and filled frame by frame, so a whole video's heatmaps
never sit in memory), an editable Points layer of tips and anchors
(features ``type``, ``tool``, ``score``; a symbol and colour per type) and,
when the model uses a SAM2 mask prior, a Labels layer with the prior.

Points can be moved, added, deleted and given another type or tool; "Use as
correction" writes the current frame's points as training annotations
(``surgseg_core.methods.tools.annotations``, CSV or JSON, what ``surgseg
train tools`` reads), in the source video's frame numbers and pixels.
All computing happens in ``surgseg_core.methods.tools.predict``
(:func:`predict_source`, the path of ``surgseg predict tools`` too).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning

from surgseg_core.errors import Cancelled, SurgsegError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.methods.tools import ACTIONS, LANDMARK_TYPES, TOOL_TYPES

from .base import (
    FrameRange, MethodWidget, ModelCache, RunControl, add_result_layer, device_value, discard_layers, frame_of,
    placement_of, points_on, saved_provenance, source_video_of, video_placement, video_shape,
)

MODES = ("current frame", "frame range", "whole video")
RANDOM_TINY = "random tiny (testing)"
DEMO_WEIGHTS = "surgseg-demo-tools"
SYMBOLS = {"tip": "disc", "anchor": "square"}
NOT_GIVEN = "(not given)"


def _run_job(cache: ModelCache, weights: Optional[str], device: Optional[str], frames, first: int, last: int,
             settings: Dict[str, Any], heatmaps: List[Any], prior, *, progress=None, cancel=None):
    """Worker body: load (or reuse) the model, predict frames first..last into
    the heatmap stacks and the prior stack. Returns (records, config,
    cancelled); a cancel keeps the frames finished."""
    from surgseg_core.methods.tools.predict import StackSink, load_tools_model, predict_source
    from surgseg_core.progress import report

    if (weights, device) not in cache:
        report(progress, 0, last - first + 1, "loading the model")
    model, cfg, provider = cache.get((weights, device), lambda: load_tools_model(weights, device=device))
    cfg = {**cfg, **settings}
    sink = StackSink(heatmaps, prior)
    try:
        predict_source(model, frames, cfg, start=first, stop=last + 1, provider=provider, progress=progress,
                       cancel=cancel, sink=sink)
    except Cancelled:
        return sink.records, cfg, True
    return sink.records, cfg, False


def _colormap(kind: str, rgb) -> Any:
    from napari.utils.colormaps import Colormap

    return Colormap([[0.0, 0.0, 0.0, 1.0], [*rgb[:3], 1.0]], name=f"surgseg tool {kind}")


class ToolLandmarksWidget(MethodWidget):
    METHOD = "tools"
    TITLE = "Tool landmarks"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.types = {self.class_names[c]: c for c in sorted(self.class_names)}  # tip, anchor -> spec class
        self.video_combo = self.video_picker()
        # registered tools weights (re-read on reset_choices), then the random test model
        self.weights_combo = self.weights_picker("Weights", present_only=True, item=lambda e: (e.name, e.name),
                                                 after=[(RANDOM_TINY, RANDOM_TINY)])
        self.weights_combo.tooltip = f"registered tools weights ({DEMO_WEIGHTS}: the demo model); {RANDOM_TINY}: " \
                                     "random weights for testing, its landmarks mean nothing"
        self.device_combo = self.device_picker()
        self.mode_combo = ComboBox(label="Run on", choices=list(MODES), value=MODES[0])
        self.frames = FrameRange()
        self.threshold_spin = FloatSpinBox(label="Threshold", min=0.0, max=1.0, step=0.05, value=0.3)
        self.threshold_spin.tooltip = "heatmap peaks below this are not landmarks"
        self.max_tools_spin = SpinBox(label="Max tools", min=1, max=20, value=1)
        self.max_tools_spin.tooltip = "at most this many tips and anchors per frame (the active tools)"
        self.prior_check = CheckBox(text="Show the SAM2 mask prior", value=True)
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.type_combo = ComboBox(label="Type", choices=list(self.types), value=LANDMARK_TYPES[0])
        self.tool_spin = SpinBox(label="Tool", min=1, max=99, value=1)
        self.type_combo.tooltip = self.tool_spin.tooltip = "of the points you add next, and for 'Set on selected'"
        self.set_btn = PushButton(text="Set type and tool of selected points")
        self.action_combo = ComboBox(label="Action", choices=list(ACTIONS), value="grasp")
        self.tool_type_combo = ComboBox(label="Tool type", choices=[NOT_GIVEN, *TOOL_TYPES], value=NOT_GIVEN)
        self.corrections_edit = FileEdit(label="Corrections file", mode="w", filter="*.csv *.json")
        self.corrections_edit.tooltip = ("tool_annotations.csv (or .json) in a training folder: 'Use as correction' "
                                         "adds the frame there (replacing what it had for it)")
        self.correct_btn = PushButton(text="Use as correction (current frame)")
        self.csv_btn = PushButton(text="Export CSV...")
        self.json_btn = PushButton(text="Export JSON...")
        self.extend([self.video_combo, self.weights_combo, self.device_combo, self.mode_combo, *self.frames.widgets,
                     self.threshold_spin, self.max_tools_spin, self.prior_check, self.run_btn, self.cancel_btn,
                     self.type_combo, self.tool_spin, self.set_btn, self.action_combo, self.tool_type_combo,
                     self.corrections_edit, self.correct_btn, self.csv_btn, self.json_btn, self.status])
        self.runs = RunControl(self, [self.run_btn], self.cancel_btn)
        self.run_btn.clicked.connect(self.run)
        self.weights_combo.changed.connect(self._settings_of_weights)
        self.set_btn.clicked.connect(self.set_selected)
        self.type_combo.changed.connect(self._apply_defaults)
        self.tool_spin.changed.connect(self._apply_defaults)
        self.correct_btn.clicked.connect(self.use_as_correction)
        self.csv_btn.clicked.connect(lambda: self._export_dialog("csv"))
        self.json_btn.clicked.connect(lambda: self._export_dialog("json"))
        self._source: Optional[Image] = None  # the video the result layers belong to
        self.heat_layers: Dict[str, Image] = {}
        self.points_layer = None
        self.prior_layer = None
        self.default_weights()

    @property
    def worker(self):
        return self.runs.worker

    # ------------------------------------------------------------- settings
    def default_weights(self) -> None:
        """The demo model when registered, else the first registered one,
        else the random test model."""
        names = list(self.weights_combo.choices)
        self.weights_combo.value = DEMO_WEIGHTS if DEMO_WEIGHTS in names else names[0]
        self._settings_of_weights()

    def _settings_of_weights(self, *_) -> None:
        """Threshold and max tools: what the chosen weights were trained with."""
        from surgseg_core.methods.tools.predict import model_config

        try:
            cfg = model_config(self._weights())
        except SurgsegError as exc:
            self.status.value = f"weights {self.weights_combo.value}: {exc}"
            return
        self.threshold_spin.value = float(cfg.get("threshold", 0.3))
        most = cfg.get("max_tools", 1)  # None / 0 / "all": no limit
        self.max_tools_spin.value = self.max_tools_spin.max if most in (None, 0, "all") else min(int(most), 20)

    def _video(self) -> Image:
        layer = self.video_combo.value
        if layer is None:
            raise SurgsegError("choose a video layer first")
        video_shape(layer)  # a video, or a clear error
        if not layer.rgb:
            raise SurgsegError(f"layer {layer.name!r} is not an RGB video: the tools model reads colour frames")
        return layer

    def frame_range(self, layer: Image) -> Tuple[int, int]:
        n = video_shape(layer)[0]
        if self.mode_combo.value == "current frame":
            t = frame_of(self.viewer, layer)
            return t, t
        if self.mode_combo.value == "frame range":
            return self.frames.resolve(n)
        return 0, n - 1

    def settings(self) -> Dict[str, Any]:
        return {"threshold": float(self.threshold_spin.value), "max_tools": int(self.max_tools_spin.value)}

    # ----------------------------------------------------------------- run
    def run(self, _=None):
        """Start a run on the chosen frames; returns the worker (None when the input is wrong)."""
        try:
            layer = self._video()
            first, last = self.frame_range(layer)
            weights = self._weights()
            created = self._ensure_layers(layer, self._model_size())
        except (SurgsegError, OSError) as exc:
            show_error(f"{self.TITLE}: {exc}")
            self.status.value = f"failed: {exc}"
            return None
        heat = [self.heat_layers[k].data for k in LANDMARK_TYPES]
        prior = self.prior_layer.data if self.prior_layer is not None else None
        self.status.value = f"running on frames {first}..{last}..."

        def done(result) -> None:
            records, cfg, cancelled = result
            self._finish(layer, created, records, cfg, cancelled)

        def failed(exc) -> None:  # run_in_worker showed the notification
            discard_layers(self.viewer, created)
            self.status.value = "cancelled" if isinstance(exc, Cancelled) else f"failed: {exc}"

        refresh = [*self.heat_layers.values(), *([self.prior_layer] if self.prior_layer is not None else [])]
        return self.runs.start(_run_job, self.models, weights, device_value(self.device_combo.value), layer.data,
                               first, last, self.settings(), heat, prior, description=self.TITLE, on_done=done,
                               on_error=failed, refresh=refresh)

    def cancel(self, _=None) -> None:
        self.runs.cancel()

    def _weights(self) -> Optional[str]:
        value = self.weights_combo.value
        if value is None:
            raise SurgsegError("no weights chosen")
        return None if value == RANDOM_TINY else str(value)

    def _model_size(self) -> Tuple[int, int, bool]:
        """(heatmap height, width, uses a prior) of the chosen weights, from
        their config (the tensors are not read: this runs on the GUI thread)."""
        from surgseg_core.methods.tools.predict import model_config
        cfg = model_config(self._weights())
        uses_prior = str(cfg.get("stage")) == "refine" and bool(cfg.get("use_prior", True))
        return int(cfg["input_height"]), int(cfg["input_width"]), uses_prior

    def _heat_placement(self, layer: Image, h: int, w: int) -> dict:
        """A (T, h, w) heatmap stack over the (T, H, W) video: heatmap pixel
        centres land on the image points they stand for (heatmaps.to_image)."""
        _, H, W = video_shape(layer)
        base = placement_of(layer)
        (st, sy, sx), (tt, ty, tx) = base["scale"], base["translate"]
        fy, fx = H / h, W / w
        return {"scale": (st, sy * fy, sx * fx), "translate": (tt, ty + sy * (fy - 1) / 2, tx + sx * (fx - 1) / 2)}

    def _ensure_layers(self, layer: Image, size: Tuple[int, int, bool]) -> list:
        """Result layers for ``layer`` (reused when they fit); returns those created now."""
        n, H, W = video_shape(layer)
        h, w, uses_prior = size
        if self._source is not layer:  # another video: never write into the previous one's layers
            self.heat_layers, self.points_layer, self.prior_layer = {}, None, None
            self._source = layer
        created = []
        for kind in LANDMARK_TYPES:
            old = self.heat_layers.get(kind)
            if old is None or old not in self.viewer.layers or old.data.shape != (n, h, w):
                # always on disk: heatmaps of a whole video are written frame by frame, never held
                stack = new_label_stack((n, h, w), np.uint8, name=f"{layer.name}_{kind}_heatmap", max_ram_mb=0)
                rgb = self.class_colours[self.types[kind]]
                self.heat_layers[kind] = add_result_layer(self.viewer, Image(
                    stack, name=f"{layer.name} {kind} heatmap", blending="additive", contrast_limits=(0, 255),
                    colormap=_colormap(kind, rgb), opacity=0.8, axis_labels=("t", "y", "x"),
                    **self._heat_placement(layer, h, w)))
                created.append(self.heat_layers[kind])
        want_prior = uses_prior and bool(self.prior_check.value)
        if want_prior and (self.prior_layer is None or self.prior_layer not in self.viewer.layers):
            name = f"{layer.name} tool mask prior"
            self.prior_layer = self.add_labels(layer, new_label_stack((n, H, W), name=name), name, record=False,
                                               opacity=0.4)
            created.append(self.prior_layer)
        elif not want_prior:
            self.prior_layer = None
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            self.points_layer = self.add_points(
                layer, f"{layer.name} tool landmarks", size=max(6.0, min(H, W) / 40),
                features={"type": np.zeros(0, object), "tool": np.zeros(0, int), "score": np.zeros(0, float)},
                border_color="white", border_width=0.1)
            self.points_layer.mode = "select"
            created.append(self.points_layer)
            self._apply_defaults()
        return created

    def _finish(self, layer: Image, created: list, records: List[dict], cfg: Dict[str, Any], cancelled: bool) -> None:
        for lyr in [*self.heat_layers.values(), self.prior_layer]:
            if lyr is not None:
                lyr.refresh()
        if not records:
            discard_layers(self.viewer, created)  # nothing ran: no empty layers left behind
            self.status.value = "cancelled before the first frame" if cancelled else "no frames"
            return
        frames = [int(r["frame"]) for r in records]
        self._replace_points(records)
        prov = {"weights": self.weights_combo.value, "checkpoint": cfg.get("checkpoint"),
                "random_weights": bool(cfg.get("random_weights")), "stage": cfg.get("stage"),
                "use_prior": cfg.get("use_prior"), "prior_sam2_weights": cfg.get("prior_sam2_weights"),
                "threshold": cfg.get("threshold"), "max_tools": cfg.get("max_tools"),
                "frames": [min(frames), max(frames)], "cancelled": cancelled, "source_layer": layer.name}
        for lyr in [self.points_layer, *self.heat_layers.values(), self.prior_layer]:
            if lyr is not None:
                self.set_provenance(lyr, prov)
        n_pts = sum(len(r.get(k, ())) for r in records for k in LANDMARK_TYPES)
        how = "cancelled; kept" if cancelled else "done:"
        message = f"{how} {len(records)} frame(s), {n_pts} landmark(s)"
        if cfg.get("random_weights"):
            message += " (RANDOM weights: testing only, the landmarks mean nothing)"
            show_warning(f"{self.TITLE}: {message}")
        else:
            show_info(f"{self.TITLE}: {message}")
        self.status.value = message

    # ------------------------------------------------------------ points layer
    def _replace_points(self, records: List[dict]) -> None:
        """The points of the frames just run are replaced by the new ones; the
        points of other frames (hand-placed included) stay."""
        import pandas as pd

        from surgseg_core.methods.tools.predict import rows_of

        pl = self.points_layer
        redone = {int(r["frame"]) for r in records}
        data = np.asarray(pl.data, float).reshape(-1, 3)
        keep = np.array([int(round(t)) not in redone for t in data[:, 0]], bool)
        rows = rows_of("", records)
        new = np.array([[r[1], r[5], r[4]] for r in rows], float).reshape(-1, 3)  # (t, y, x)
        feats = pd.concat([pl.features[keep].reset_index(drop=True),
                           pd.DataFrame({"type": [r[2] for r in rows], "tool": [r[3] for r in rows],
                                         "score": [float(r[6]) for r in rows]})], ignore_index=True)
        feats["tool"] = feats["tool"].astype(int)
        # model output, not an edit: the edit record (corrections export) must not see it
        with pl.events.data.blocker():
            pl.data = np.concatenate([data[keep], new])
        pl.features = feats
        self._restyle()

    def _restyle(self) -> None:
        """Symbols and colours from the ``type`` feature (the one truth)."""
        pl = self.points_layer
        kinds = list(pl.features["type"]) if len(pl.data) else []
        if kinds:
            pl.symbol = [SYMBOLS.get(k, "cross") for k in kinds]
            pl.face_color = [self.class_colours.get(self.types.get(k), (1.0, 1.0, 1.0, 1.0)) for k in kinds]
        self._apply_defaults()
        pl.refresh()

    def _apply_defaults(self, *_) -> None:
        """Points added next get the chosen type and tool (and its look)."""
        pl = self.points_layer
        if pl is None or pl not in self.viewer.layers:
            return
        kind = str(self.type_combo.value)
        pl.selected_data = set()  # napari would restyle selected points with the new current look
        pl.feature_defaults = {"type": kind, "tool": int(self.tool_spin.value), "score": np.nan}
        pl.current_symbol = SYMBOLS[kind]
        pl.current_face_color = self.class_colours[self.types[kind]]

    def set_selected(self, _=None) -> int:
        """Give the selected points the chosen type and tool."""
        pl = self.points_layer
        if pl is None or not pl.selected_data:
            show_error(f"{self.TITLE}: select points in the landmarks layer first")
            return 0
        picked = sorted(pl.selected_data)
        feats = pl.features.copy()
        feats.loc[picked, "type"] = str(self.type_combo.value)
        feats.loc[picked, "tool"] = int(self.tool_spin.value)
        pl.features = feats
        self._restyle()
        return len(picked)

    # ---------------------------------------------------- corrections / export
    def _source_points(self) -> Tuple[np.ndarray, Any]:
        """(N, 3) (frame, y, x) of the points in the source video's frames and
        pixels (through the layer's placement in its video), and the features."""
        layer, pl = self._source, self.points_layer
        if layer is None or pl is None or layer not in self.viewer.layers:
            raise SurgsegError("run the model (or add points) first")
        tyx = points_on(pl, layer)
        place = video_placement(layer.metadata or {})
        return tyx * np.asarray(place["scale"]) + np.asarray(place["translate"]), pl.features

    def use_as_correction(self, _=None) -> Optional[Path]:
        """Write the current frame's points as training annotations into the
        corrections file (the frame replaces what the file had for it)."""
        from surgseg_core.methods.tools.annotations import records_from_points, replace_frames

        try:
            text = str(self.corrections_edit.line_edit.value or "").strip()  # FileEdit turns "" into "."
            if not text:
                raise SurgsegError("choose a corrections file (tool_annotations.csv or .json in a training folder)")
            path = Path(text).expanduser()
            if path.suffix.lower() not in (".csv", ".json"):
                raise SurgsegError(f"corrections file {path} must end in .csv or .json")
            tyx, feats = self._source_points()
            video = source_video_of(self._source)
            if not video:
                raise SurgsegError(f"layer {self._source.name!r} has no video file: annotations name their video")
            frame = frame_of(self.viewer, self._source)
            place = video_placement(self._source.metadata or {})
            src_frame = int(round(frame * place["scale"][0] + place["translate"][0]))
            on = [i for i in range(len(tyx)) if int(round(tyx[i, 0])) == src_frame]
            pts = [(feats["type"].iloc[i], int(feats["tool"].iloc[i]), tyx[i, 2], tyx[i, 1]) for i in on]
            tool_type = None if self.tool_type_combo.value == NOT_GIVEN else str(self.tool_type_combo.value)
            try:  # relative to the file, as the format wants; absolute across drives
                rel = os.path.relpath(Path(video).resolve(), path.parent.resolve())
            except ValueError:
                rel = str(Path(video).resolve())
            records = records_from_points(Path(rel).as_posix(), src_frame, pts, action=str(self.action_combo.value),
                                          tool_types={p[1]: tool_type for p in pts})
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_frames(path, records, provenance=saved_provenance(
                self.points_layer, "tool annotations", frames=[src_frame], source_frames=True, video=self._source))
        except (SurgsegError, OSError) as exc:
            show_error(f"{self.TITLE}: {exc}")
            self.status.value = f"correction not written: {exc}"
            return None
        meta = self.points_layer.metadata.setdefault(self.METHOD, {})
        meta["corrected_frames"] = sorted(set(meta.get("corrected_frames", [])) | {frame})
        message = f"frame {src_frame}: {len(pts)} landmark(s) written to {path}"
        show_info(f"{self.TITLE}: {message}")
        self.status.value = message
        return path

    def export(self, path, fmt: Optional[str] = None) -> Path:
        """All points (edited or not) as the predictions CSV/JSON of
        ``surgseg predict tools`` (source video frames and pixels); ``fmt``
        defaults to the file's suffix."""
        from surgseg_core.methods.tools.predict import write_prediction_file

        path = Path(path)
        if fmt is not None and path.suffix.lower() != f".{fmt}":
            path = path.with_suffix(f".{fmt}")
        tyx, feats = self._source_points()
        if not len(tyx):
            raise SurgsegError("no landmarks to export: run the model first")
        video = source_video_of(self._source) or self._source.name
        rows = []
        for i in np.argsort(tyx[:, 0], kind="stable"):
            score = float(feats["score"].iloc[i])
            rows.append([video, int(round(tyx[i, 0])), str(feats["type"].iloc[i]), int(feats["tool"].iloc[i]),
                         round(float(tyx[i, 2]), 3), round(float(tyx[i, 1]), 3),
                         None if not np.isfinite(score) else round(score, 4)])
        prov = saved_provenance(self.points_layer, "points:tool landmarks", frames=[r[1] for r in rows],
                                source_frames=True, video=self._source)
        return write_prediction_file(path, video, rows, prov)

    def _export_dialog(self, fmt: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        try:
            path, _ = QFileDialog.getSaveFileName(self.native, f"Export tool landmarks ({fmt})", "", f"*.{fmt}")
            if path:
                written = self.export(path, fmt)
                show_info(f"{self.TITLE}: wrote {written}")
        except (SurgsegError, OSError) as exc:
            show_error(f"{self.TITLE} export: {exc}")
