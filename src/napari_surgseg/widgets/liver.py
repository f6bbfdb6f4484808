"""Liver landmarks widget: run a trained liver model on the current frame,
a frame range or the whole video (in a worker), show the result as a Labels
layer plus an editable Shapes layer of paths per class, turn edited paths
back into training labels ("Use as correction") and export landmarks as
JSON / CSV / P2ILF XML. All computing happens in
``surgseg_core.methods.liver``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from surgseg_core.errors import Cancelled, SurgsegError, WeightsError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.methods.liver import CLASS_COLOURS, CLASS_NAMES, LANDMARK_CLASSES
from surgseg_core.methods.liver.export import write_landmarks_csv, write_landmarks_json, write_p2ilf_xml_frames
from surgseg_core.methods.liver.rasterize import draw_polyline

from .._autosave import watch_layer
from .._layers import frame_of, placement_of
from .._workers import run_in_worker
from ._result_layers import add_result_layer, discard_layers
from ._status import StatusLabel
from .corrections import connect_layer_refresh, layer_choices, source_video_of

log = logging.getLogger(__name__)

MODES = ("current frame", "frame range", "whole video")
# Labels colours (RGBA 0-1) matching the Shapes edge colours
LABEL_COLORS = {0: (0, 0, 0, 0), None: (0, 0, 0, 0),
                **{c: tuple(v / 255 for v in CLASS_COLOURS[c]) + (1.0,) for c in LANDMARK_CLASSES}}


def _path_frame(path) -> int:
    """Frame of a Shapes path: its first coordinate in a video (hand-drawn
    paths included), 0 in a single image (2-D paths)."""
    d = np.asarray(path)
    return int(round(float(d[0, 0]))) if d.shape[1] == 3 else 0


def _registered_weights() -> List[tuple]:
    try:
        from surgseg_core.weights import list_weights
    except ImportError:
        return []
    try:
        return [(f"{e.name}", e.path) for e in list_weights(method="liver") if Path(e.path).is_file()]
    except Exception as exc:  # a broken registry must not break the widget
        log.warning("cannot list registered liver weights: %s", exc)
        return []


def _predict_job(checkpoint: str, frames, indices, options, cache: dict, labels, single: bool, *,
                 progress=None, cancel=None):
    """Worker body: load (or reuse) the model, predict the frames. Each
    frame's label map goes straight into ``labels`` (the Labels layer's array,
    a memory map for long videos) and only its polylines are kept, so a
    whole video's results never sit in memory; a cancel keeps what is done.
    Returns (provenance, {frame: polylines}, cancelled)."""
    from surgseg_core.methods.liver.predict import LiverPredictor, predict_frames

    predictor = cache.get(checkpoint)
    if predictor is None:
        predictor = LiverPredictor.from_checkpoint(checkpoint, device="cpu")
        cache.clear()
        cache[checkpoint] = predictor
    predictor.options = options
    polylines: dict = {}

    def store(i, pred) -> None:
        res = pred.result
        out = res.dilated if res.dilated is not None else res.thin
        if single:
            labels[...] = out
        else:
            labels[i] = out
        polylines[i] = res.polylines

    try:
        predict_frames(predictor, frames, indices, progress=progress, cancel=cancel, postprocess_on=True, sink=store)
    except Cancelled:
        return predictor.provenance(options), polylines, True
    return predictor.provenance(options), polylines, False


class LiverLandmarksWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        v = napari_viewer
        self.image_combo = ComboBox(label="Image", choices=layer_choices(v, Image))
        # a callable: the list is re-read on reset_choices (models trained or registered meanwhile)
        self.weights_combo = ComboBox(label="Registered", choices=lambda _w=None: [("(file below)", None)]
                                      + _registered_weights())
        self.checkpoint_edit = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth *.safetensors")
        self.mode_combo = ComboBox(label="Run on", choices=list(MODES), value=MODES[0])
        self.start_spin = SpinBox(label="From frame", min=0, max=10**7, value=0)
        self.stop_spin = SpinBox(label="To frame (excl.)", min=1, max=10**7, value=1)
        self.join_spin = FloatSpinBox(label="Join gaps (px)", min=0, max=200, value=15.0)
        self.rdp_spin = FloatSpinBox(label="RDP epsilon (px)", min=0, max=20, value=1.0, step=0.5)
        self.thick_spin = FloatSpinBox(label="Line thickness (px)", min=1, max=100, value=12.0)
        self.cull_box = CheckBox(label="Camera + ligament culling", value=True)
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.class_combo = ComboBox(label="Class of drawn curves",
                                    choices=[(CLASS_NAMES[c], c) for c in LANDMARK_CLASSES], value=LANDMARK_CLASSES[0])
        self.reclass_btn = PushButton(text="Set class of selected curves")
        self.correct_btn = PushButton(text="Use as correction (current frame)")
        self.json_btn = PushButton(text="Export JSON...")
        self.csv_btn = PushButton(text="Export CSV...")
        self.xml_btn = PushButton(text="Export P2ILF XML...")
        self.status = StatusLabel()
        self.extend([self.image_combo, self.weights_combo, self.checkpoint_edit, self.mode_combo, self.start_spin,
                     self.stop_spin, self.join_spin, self.rdp_spin, self.thick_spin, self.cull_box, self.run_btn,
                     self.cancel_btn, self.class_combo, self.reclass_btn, self.correct_btn, self.json_btn,
                     self.csv_btn, self.xml_btn, self.status])
        self.weights_combo.changed.connect(self._on_registered)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.class_combo.changed.connect(self._apply_class_defaults)
        self.reclass_btn.clicked.connect(self.set_selected_class)
        self.correct_btn.clicked.connect(self.use_as_correction)
        self.json_btn.clicked.connect(lambda: self._export_dialog("json"))
        self.csv_btn.clicked.connect(lambda: self._export_dialog("csv"))
        self.xml_btn.clicked.connect(lambda: self._export_dialog("xml"))
        connect_layer_refresh(v, self)
        self.labels_layer = None
        self.shapes_layer = None
        self.worker = None
        self._token = None
        self._model_cache: dict = {}
        self._adding_paths = False
        self._source = None  # the image layer the result layers belong to

    # ------------------------------------------------------------- helpers
    def _on_registered(self, value) -> None:
        if value:
            self.checkpoint_edit.value = value

    def _checkpoint(self) -> str:
        """The chosen checkpoint file, or a WeightsError saying what to choose."""
        # the field's own text: FileEdit turns an empty field into the current directory
        text = str(self.checkpoint_edit.line_edit.value or "").strip()
        if not text:
            raise WeightsError("no checkpoint chosen: choose a registered model or a liver checkpoint file "
                               "(checkpoints/best.pt of a training run)")
        path = Path(text).expanduser()
        if path.is_dir():
            raise WeightsError(f"checkpoint {path} is a folder, not a file: choose the checkpoint inside it "
                               "(e.g. checkpoints/best.pt)")
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}: choose an existing .pt file or a registered model")
        return str(path)

    def _failed(self, exc: BaseException, notify: bool = True) -> None:
        """One notification (unless the worker already showed it) and the status line say what went wrong."""
        if notify:
            show_error(f"Liver landmarks: {exc}")
        self.status.value = "cancelled" if isinstance(exc, Cancelled) else f"failed: {exc}"

    def _image(self) -> Image:
        layer = self.image_combo.value
        if layer is None:
            raise SurgsegError("choose an image layer first")
        return layer

    @staticmethod
    def _frames(layer: Image):
        """(T, H, W[, 3]) frames and whether the layer is a single image."""
        data = layer.data
        rgb = bool(getattr(layer, "rgb", False))
        single = data.ndim == (3 if rgb else 2)
        return ([data] if single else data), single

    def _current_frame(self, single: bool) -> int:
        return 0 if single else frame_of(self.viewer, self._image())  # via world coordinates: ranged layers

    def options(self):
        from surgseg_core.methods.liver.postprocess import PostprocessOptions

        cull = bool(self.cull_box.value)
        return PostprocessOptions(camera_culling=cull, ligament_culling="columns" if cull else None,
                                  join=self.join_spin.value > 0, join_distance=float(self.join_spin.value),
                                  rdp_epsilon=float(self.rdp_spin.value), out_thickness=float(self.thick_spin.value))

    def frame_indices(self, n_frames: int, single: bool) -> List[int]:
        mode = self.mode_combo.value
        if single or mode == "current frame":
            return [self._current_frame(single)]
        if mode == "frame range":
            start, stop = int(self.start_spin.value), min(int(self.stop_spin.value), n_frames)
            if start >= stop:
                raise SurgsegError(f"empty frame range {start}..{stop} (the video has {n_frames} frames)")
            return list(range(start, stop))
        return list(range(n_frames))

    # ----------------------------------------------------------------- run
    def run(self, _=None):
        try:
            layer = self._image()
            ckpt = self._checkpoint()
            frames, single = self._frames(layer)
            indices = self.frame_indices(len(frames), single)
        except SurgsegError as exc:
            self._failed(exc)
            return None
        frame_hw = tuple(np.shape(frames[0])[:2]) if single else tuple(layer.data.shape[1:3])
        created = self._ensure_layers(layer, single, len(frames), frame_hw)
        # each frame is overwritten when its new result is ready; frames a cancel
        # never reaches keep what they had (no multi-GB zeroing of a long video's stack)
        labels = self.labels_layer
        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = f"running on {len(indices)} frame(s)..."
        target = (layer, single)

        def done(result):
            if created and result[1] and self.shapes_layer in self.viewer.layers:
                self.viewer.layers.selection.active = self.shapes_layer  # the curves to edit next
            self._finish(target, *result)

        def failed(exc):  # run_in_worker showed the notification
            discard_layers(self.viewer, created)  # a failed run leaves no empty layers behind
            self._failed(exc, notify=False)

        self.worker, self._token = run_in_worker(
            _predict_job, ckpt, frames, indices, self.options(), self._model_cache, labels.data, single,
            on_done=done, description="Liver landmarks", owner=self, progress_unit="frames")
        self.worker.errored.connect(failed)
        self.worker.yielded.connect(lambda _update: labels.refresh())
        self.worker.finished.connect(self._reset_buttons)
        return self.worker

    def cancel(self, _=None) -> None:
        if self._token is not None:
            self._token.cancel()

    def _reset_buttons(self, *_):
        self.cancel_btn.enabled = False
        if not self._adding_paths:  # else the last chunk re-enables Run
            self.run_btn.enabled = True

    def _ensure_layers(self, layer: Image, single: bool, n_frames: int, shape_hw) -> list:
        """Result layers for ``layer`` (reused when they fit); returns those created now."""
        created = []
        shape = tuple(shape_hw) if single else (n_frames, *shape_hw)
        if self._source is not layer:  # another video: never write into the previous one's layers
            self.labels_layer = self.shapes_layer = None
            self._source = layer
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers \
                or self.labels_layer.data.shape != shape:
            name = f"{layer.name} liver labels"
            self.labels_layer = add_result_layer(
                self.viewer, Labels(new_label_stack(shape, name=name), name=name, colormap=_label_colormap(),
                                    **placement_of(layer, len(shape))))
            created.append(self.labels_layer)
            watch_layer(self.labels_layer, source_video_of(layer))
        if self.shapes_layer is None or self.shapes_layer not in self.viewer.layers:
            self.shapes_layer = add_result_layer(
                self.viewer, Shapes(name=f"{layer.name} liver curves", ndim=2 if single else 3, edge_width=3,
                                    face_color="transparent", **placement_of(layer, 2 if single else 3)))
            created.append(self.shapes_layer)
            self.shapes_layer.features = {"class_id": np.zeros(0, int), "frame": np.zeros(0, int)}
            self._apply_class_defaults()
            watch_layer(self.shapes_layer, source_video_of(layer))
        return created

    def _finish(self, target, provenance: dict, polylines: Dict, cancelled: bool = False) -> None:
        layer, single = target
        self.labels_layer.refresh()
        if not polylines:
            self.status.value = "cancelled before the first frame" if cancelled else "no frames"
            if cancelled:
                show_info("Liver landmarks: cancelled")
            return
        meta = {**provenance, "source_layer": layer.name}
        self.labels_layer.metadata.update({"liver": meta})
        self.shapes_layer.metadata.update({"liver": meta})
        how = "cancelled; kept landmarks of" if cancelled else "landmarks on"
        message = f"{how} {len(polylines)} frame(s)"

        def shown() -> None:
            self.status.value = message
            show_info(f"Liver landmarks: {message}")

        self._replace_paths(polylines, single, then=shown)

    #: paths added to the Shapes layer per turn of the GUI event loop (napari
    #: takes ~0.25 ms per path: a 10-minute video's ~75 000 curves in one call
    #: would freeze the window for ~20 s)
    PATH_CHUNK = 2000

    def _replace_paths(self, polylines: Dict, single: bool, then=None) -> None:
        """Replace the paths of the redone frames by their new ones; paths of
        other frames (hand-drawn ones included) stay untouched, so redoing one
        frame of a long video costs one frame's paths. New paths are added in
        chunks with the event loop running between them; ``then()`` runs when
        all are shown."""
        from qtpy.QtCore import QTimer

        sl = self.shapes_layer
        frame_of = [_path_frame(d) for d in sl.data]
        drop = [k for k, f in enumerate(frame_of) if single or f in polylines]
        if drop:
            sl.selected_data = set(drop)
            sl.remove_selected()
        data, cls_ids, fr_ids = [], [], []
        for i, per_class in sorted(polylines.items()):
            for c in LANDMARK_CLASSES:
                for line in per_class.get(c, ()):
                    yx = np.asarray(line)[:, ::-1]
                    data.append(yx if single else np.column_stack([np.full(len(yx), i), yx]))
                    cls_ids.append(c)
                    fr_ids.append(0 if single else i)
        colours = [LABEL_COLORS[c] for c in cls_ids]
        rows: List[int] = []  # layer rows of the added paths (a hand-drawn path may land between chunks)
        state = {"next": 0}
        self._adding_paths, self.run_btn.enabled = True, False  # a new run must not interleave with the chunks

        def add_chunk() -> None:
            if sl not in self.viewer.layers:  # deleted meanwhile: nothing to fill
                self._adding_paths, self.run_btn.enabled = False, True
                return
            k = state["next"]
            if k < len(data):
                chunk = data[k:k + self.PATH_CHUNK]
                start = len(sl.data)
                sl.add_paths(chunk, edge_color=colours[k:k + self.PATH_CHUNK], edge_width=3)
                rows.extend(range(start, start + len(chunk)))
                state["next"] = k + self.PATH_CHUNK
                if state["next"] < len(data):
                    self.status.value = f"showing curves {state['next']}/{len(data)}..."
                    QTimer.singleShot(0, add_chunk)
                    return
            if rows:
                feats = sl.features.copy()
                feats.iloc[rows, feats.columns.get_loc("class_id")] = cls_ids
                feats.iloc[rows, feats.columns.get_loc("frame")] = fr_ids
                sl.features = feats
            self._apply_class_defaults()
            self._adding_paths, self.run_btn.enabled = False, True
            if then is not None:
                then()

        add_chunk()

    # ---------------------------------------------------------- edit / export
    def _apply_class_defaults(self, *_) -> None:
        """Curves the user draws next get the chosen class (feature) and its colour."""
        sl = self.shapes_layer
        if sl is None or sl not in self.viewer.layers:
            return
        cls = int(self.class_combo.value)
        sl.feature_defaults = {"class_id": cls, "frame": 0}
        sl.current_edge_color = LABEL_COLORS[cls]

    def set_selected_class(self, _=None) -> int:
        """Give the selected curves the chosen class (and its colour)."""
        sl = self.shapes_layer
        if sl is None or not sl.selected_data:
            show_error("Liver landmarks: select curves in the curves layer first")
            return 0
        cls = int(self.class_combo.value)
        picked = sorted(sl.selected_data)
        feats = sl.features.copy()
        feats.loc[picked, "class_id"] = cls
        sl.features = feats
        colours = np.asarray(sl.edge_color).copy()
        colours[picked] = LABEL_COLORS[cls]
        sl.edge_color = colours
        return len(picked)

    def frame_polylines(self) -> Dict[int, Dict[int, List[np.ndarray]]]:
        """Current (possibly edited or drawn) paths of the Shapes layer:
        {frame: {class: [(N, 2) x, y]}}. The frame of a path in a video is its
        first coordinate (a curve drawn by hand has no "frame" feature of its
        own); paths of a class that is not a landmark are skipped."""
        out: Dict[int, Dict[int, List[np.ndarray]]] = {}
        sl = self.shapes_layer
        if sl is None:
            return out
        feats = sl.features
        for k, d in enumerate(sl.data):
            c = int(feats["class_id"].iloc[k])
            if c not in LANDMARK_CLASSES:
                continue
            out.setdefault(_path_frame(d), {cc: [] for cc in LANDMARK_CLASSES})[c].append(np.asarray(d)[:, -2:][:, ::-1])
        return out

    def use_as_correction(self, _=None) -> Optional[int]:
        """Rasterise the current frame's paths into the Labels layer (the
        frame becomes training data) and mark the frame as corrected."""
        if self.shapes_layer is None or self.labels_layer is None:
            show_error("Liver landmarks: run the model (or draw paths) first")
            return None
        single = self.labels_layer.data.ndim == 2
        frame = self._current_frame(single)
        polys = self.frame_polylines().get(frame, {})
        canvas = np.zeros(self.labels_layer.data.shape[-2:], np.uint8)
        thick = float(self.thick_spin.value)
        for c in LANDMARK_CLASSES:  # the rasteriser's class order: later classes win
            for xy in polys.get(c, ()):
                draw_polyline(canvas, xy, c, thick)
        if single:
            self.labels_layer.data[...] = canvas
        else:
            self.labels_layer.data[frame] = canvas
        self.labels_layer.refresh()
        meta = self.labels_layer.metadata.setdefault("liver", {})
        meta["corrected_frames"] = sorted(set(meta.get("corrected_frames", [])) | {frame})
        show_info(f"Liver landmarks: frame {frame} stored as correction")
        return frame

    def _provenance(self) -> dict:
        return dict((self.shapes_layer.metadata or {}).get("liver", {})) if self.shapes_layer is not None else {}

    def export(self, path, fmt: str) -> List[Path]:
        frames = self.frame_polylines()
        if not frames:
            raise SurgsegError("no landmarks to export: run the model first")
        size = None
        if self.labels_layer is not None:
            h, w = self.labels_layer.data.shape[-2:]
            size = (w, h)
        path = Path(path)
        if fmt == "json":
            return [write_landmarks_json(path, frames, size, self._provenance())]
        if fmt == "csv":
            return [write_landmarks_csv(path, frames)]
        if fmt == "xml":
            return write_p2ilf_xml_frames(path, frames, stem=path.name or "frame")
        raise SurgsegError(f"unknown export format {fmt!r}")

    def _export_dialog(self, fmt: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        try:
            if fmt == "xml":
                path = QFileDialog.getExistingDirectory(self.native, "Folder for P2ILF XML files")
            else:
                path, _ = QFileDialog.getSaveFileName(self.native, f"Export landmarks ({fmt})", "",
                                                      f"*.{fmt}")
            if path:
                written = self.export(path, fmt)
                show_info(f"Liver landmarks: wrote {len(written)} file(s) to {Path(path)}")
        except (SurgsegError, OSError) as exc:
            show_error(f"Liver landmarks export: {exc}")


def _label_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=LABEL_COLORS)
