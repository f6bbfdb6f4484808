"""Liver landmarks widget: run a trained liver model on the current frame,
a frame range or the whole video (in a worker), show the result as a Labels
layer plus an editable Shapes layer of paths per class, turn edited paths
back into training labels ("Use as correction") and export landmarks as
JSON / CSV / P2ILF XML. All computing happens in
``surgseg_core.methods.liver``; classes and colours come from its spec.
Built on the method-widget base (``widgets.base``)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from surgseg_core.errors import Cancelled, SurgsegError, WeightsError
from surgseg_core.io.label_stack import new_label_stack
from surgseg_core.methods.liver.export import write_landmarks_csv, write_landmarks_json, write_p2ilf_xml_frames

from .base import (
    FrameRange, MethodWidget, ModelCache, RunControl, class_colormap, device_value, discard_layers, frame_of,
    provenance_of, saved_provenance,
)

MODES = ("current frame", "frame range", "whole video")


def _path_frame(path) -> int:
    """Frame of a Shapes path: its first coordinate in a video (hand-drawn
    paths included), 0 in a single image (2-D paths)."""
    d = np.asarray(path)
    return int(round(float(d[0, 0]))) if d.shape[1] == 3 else 0


def _predict_job(checkpoint: str, device: Optional[str], frames, indices, options, cache: ModelCache, labels,
                 single: bool, *, progress=None, cancel=None):
    """Worker body: load (or reuse) the model, predict the frames. Each
    frame's label map goes straight into ``labels`` (the Labels layer's array,
    a memory map for long videos) and only its polylines are kept, so a
    whole video's results never sit in memory; a cancel keeps what is done.
    Returns (provenance, {frame: polylines}, cancelled)."""
    from surgseg_core.methods.liver.predict import LiverPredictor, predict_frames

    predictor = cache.get((checkpoint, device), lambda: LiverPredictor.from_checkpoint(checkpoint, device=device))
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


class LiverLandmarksWidget(MethodWidget):
    METHOD = "liver"
    TITLE = "Liver landmarks"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.classes = tuple(sorted(self.class_names))  # the spec's landmark classes, in drawing order
        self.image_combo = self.video_picker("Image")
        # re-read on reset_choices: models trained or registered meanwhile appear
        self.weights_combo = self.weights_picker("Registered", present_only=True, item=lambda e: (e.name, e.path),
                                                 before=[("(file below)", None)])
        self.checkpoint_edit = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth *.safetensors")
        self.device_combo = self.device_picker()
        self.mode_combo = ComboBox(label="Run on", choices=list(MODES), value=MODES[0])
        self.frames = FrameRange()
        self.start_spin, self.end_spin = self.frames.start_spin, self.frames.end_spin
        self.join_spin = FloatSpinBox(label="Join gaps (px)", min=0, max=200, value=15.0)
        self.rdp_spin = FloatSpinBox(label="RDP epsilon (px)", min=0, max=20, value=1.0, step=0.5)
        self.thick_spin = FloatSpinBox(label="Line thickness (px)", min=1, max=100, value=12.0)
        self.cull_box = CheckBox(label="Camera + ligament culling", value=True)
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.class_combo = ComboBox(label="Class of drawn curves",
                                    choices=[(self.class_names[c], c) for c in self.classes], value=self.classes[0])
        self.reclass_btn = PushButton(text="Set class of selected curves")
        self.correct_btn = PushButton(text="Use as correction (current frame)")
        self.json_btn = PushButton(text="Export JSON...")
        self.csv_btn = PushButton(text="Export CSV...")
        self.xml_btn = PushButton(text="Export P2ILF XML...")
        self.extend([self.image_combo, self.weights_combo, self.checkpoint_edit, self.device_combo, self.mode_combo,
                     *self.frames.widgets, self.join_spin, self.rdp_spin, self.thick_spin, self.cull_box,
                     self.run_btn, self.cancel_btn, self.class_combo, self.reclass_btn, self.correct_btn,
                     self.json_btn, self.csv_btn, self.xml_btn, self.status])
        self.runs = RunControl(self, [self.run_btn], self.cancel_btn)
        self.weights_combo.changed.connect(self._on_registered)
        self.run_btn.clicked.connect(self.run)
        self.class_combo.changed.connect(self._apply_class_defaults)
        self.reclass_btn.clicked.connect(self.set_selected_class)
        self.correct_btn.clicked.connect(self.use_as_correction)
        self.json_btn.clicked.connect(lambda: self._export_dialog("json"))
        self.csv_btn.clicked.connect(lambda: self._export_dialog("csv"))
        self.xml_btn.clicked.connect(lambda: self._export_dialog("xml"))
        self.labels_layer = None
        self.shapes_layer = None
        self._adding_paths = False
        self._source = None  # the image layer the result layers belong to

    @property
    def worker(self):
        return self.runs.worker

    @property
    def _token(self):
        return self.runs.token

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
            show_error(f"{self.TITLE}: {exc}")
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
            first, last = self.frames.resolve(n_frames)
            return list(range(first, last + 1))
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
        self.status.value = f"running on {len(indices)} frame(s)..."
        target = (layer, single)

        def done(result):
            if created and result[1] and self.shapes_layer in self.viewer.layers:
                self.viewer.layers.selection.active = self.shapes_layer  # the curves to edit next
            self._finish(target, *result)

        def failed(exc):  # run_in_worker showed the notification
            discard_layers(self.viewer, created)  # a failed run leaves no empty layers behind
            self._failed(exc, notify=False)

        return self.runs.start(
            _predict_job, ckpt, device_value(self.device_combo.value), frames, indices, self.options(), self.models,
            labels.data, single, description=self.TITLE, on_done=done, on_error=failed, refresh=[labels])

    def cancel(self, _=None) -> None:
        self.runs.cancel()

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
            self.labels_layer = self.add_labels(layer, new_label_stack(shape, name=name), name, record=False,
                                                colormap=class_colormap(self.spec.class_colours))
            created.append(self.labels_layer)
        if self.shapes_layer is None or self.shapes_layer not in self.viewer.layers:
            self.shapes_layer = self.add_shapes(layer, f"{layer.name} liver curves", ndim=2 if single else 3,
                                                features={"class_id": np.zeros(0, int), "frame": np.zeros(0, int)},
                                                edge_width=3, face_color="transparent")
            created.append(self.shapes_layer)
            self._apply_class_defaults()
        return created

    def _finish(self, target, provenance: dict, polylines: Dict, cancelled: bool = False) -> None:
        layer, single = target
        self.labels_layer.refresh()
        if not polylines:
            self.status.value = "cancelled before the first frame" if cancelled else "no frames"
            if cancelled:
                show_info(f"{self.TITLE}: cancelled")
            return
        meta = {**provenance, "source_layer": layer.name}
        self.set_provenance(self.labels_layer, meta)
        self.set_provenance(self.shapes_layer, meta)
        how = "cancelled; kept landmarks of" if cancelled else "landmarks on"
        message = f"{how} {len(polylines)} frame(s)"

        def shown() -> None:
            self.status.value = message
            show_info(f"{self.TITLE}: {message}")

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
            for c in self.classes:
                for line in per_class.get(c, ()):
                    yx = np.asarray(line)[:, ::-1]
                    data.append(yx if single else np.column_stack([np.full(len(yx), i), yx]))
                    cls_ids.append(c)
                    fr_ids.append(0 if single else i)
        colours = [self.class_colours[c] for c in cls_ids]
        rows: List[int] = []  # layer rows of the added paths (a hand-drawn path may land between chunks)
        state = {"next": 0}
        self._set_adding(True)  # a new run must not interleave with the chunks

        def add_chunk() -> None:
            if sl not in self.viewer.layers:  # deleted meanwhile: nothing to fill
                self._set_adding(False)
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
            self._set_adding(False)
            if then is not None:
                then()

        add_chunk()

    def _set_adding(self, adding: bool) -> None:
        """While paths are being added the Run button stays off (the run itself may be over)."""
        self._adding_paths = self.runs.hold = adding
        if adding:
            self.run_btn.enabled = False
        elif not self.runs.busy:
            self.runs.set_busy(False)

    # ---------------------------------------------------------- edit / export
    def _apply_class_defaults(self, *_) -> None:
        """Curves the user draws next get the chosen class (feature) and its colour."""
        sl = self.shapes_layer
        if sl is None or sl not in self.viewer.layers:
            return
        cls = int(self.class_combo.value)
        sl.feature_defaults = {"class_id": cls, "frame": 0}
        sl.current_edge_color = self.class_colours[cls]

    def set_selected_class(self, _=None) -> int:
        """Give the selected curves the chosen class (and its colour)."""
        sl = self.shapes_layer
        if sl is None or not sl.selected_data:
            show_error(f"{self.TITLE}: select curves in the curves layer first")
            return 0
        cls = int(self.class_combo.value)
        picked = sorted(sl.selected_data)
        feats = sl.features.copy()
        feats.loc[picked, "class_id"] = cls
        sl.features = feats
        colours = np.asarray(sl.edge_color).copy()
        colours[picked] = self.class_colours[cls]
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
            if c not in self.classes:
                continue
            out.setdefault(_path_frame(d), {cc: [] for cc in self.classes})[c].append(np.asarray(d)[:, -2:][:, ::-1])
        return out

    def use_as_correction(self, _=None) -> Optional[int]:
        """Rasterise the current frame's paths into the Labels layer (the
        frame becomes training data) and mark the frame as corrected."""
        if self.shapes_layer is None or self.labels_layer is None:
            show_error(f"{self.TITLE}: run the model (or draw paths) first")
            return None
        single = self.labels_layer.data.ndim == 2
        frame = self._current_frame(single)
        polys = self.frame_polylines().get(frame, {})
        # the method's own rasteriser: the masks it trains on
        canvas = self.spec.rasterize_curves(polys, tuple(self.labels_layer.data.shape[-2:]), float(self.thick_spin.value))
        if single:
            self.labels_layer.data[...] = canvas
        else:
            self.labels_layer.data[frame] = canvas
        self.labels_layer.refresh()
        meta = self.labels_layer.metadata.setdefault(self.METHOD, {})
        meta["corrected_frames"] = sorted(set(meta.get("corrected_frames", [])) | {frame})
        show_info(f"{self.TITLE}: frame {frame} stored as correction")
        return frame

    def _provenance(self) -> dict:
        return provenance_of(self.shapes_layer) if self.shapes_layer is not None else {}

    def export(self, path, fmt: str) -> List[Path]:
        frames = self.frame_polylines()
        if not frames:
            raise SurgsegError("no landmarks to export: run the model first")
        size = None
        if self.labels_layer is not None:
            h, w = self.labels_layer.data.shape[-2:]
            size = (w, h)
        path = Path(path)
        prov = saved_provenance(self.shapes_layer, "curves", frames=sorted(frames), video=self._source)
        if fmt == "json":
            return [write_landmarks_json(path, frames, size, prov)]
        if fmt == "csv":
            return [write_landmarks_csv(path, frames, prov)]
        if fmt == "xml":
            return write_p2ilf_xml_frames(path, frames, stem=path.name or "frame", provenance=prov)
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
                show_info(f"{self.TITLE}: wrote {len(written)} file(s) to {Path(path)}")
        except (SurgsegError, OSError) as exc:
            show_error(f"{self.TITLE} export: {exc}")

