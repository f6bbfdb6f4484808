"""Dock widget: corrections in the viewer -> a training dataset, and the
frames to correct next (core: ``export_corrections``,
``rank_frames_by_uncertainty``).

Layers are picked in combo boxes filled from the viewer; export and ranking
run in a worker; clicking a ranked frame moves the time slider there.
"""
from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from surgseg_core.datasets import corrected_frame_reasons, export_corrections, rank_frames_by_uncertainty
from surgseg_core.datasets.corrections import GENERIC

from .._edits import edited_frames, record_viewer_edits
from .._workers import run_in_worker
from .base import (
    StatusLabel, connect_layer_refresh, layer_choices, points_on, provenance_of, show_frame, source_video_of,
)


def export_methods(_widget=None) -> list:
    """"generic" and every registered method (no list of names here)."""
    from surgseg_core.training.method import available_methods

    return [GENERIC] + available_methods()


def point_classes_of(points_layer) -> Optional[list]:
    features = getattr(points_layer, "features", None)
    if features is None:
        return None
    for column in ("label", "class", "landmark"):
        if column in features:
            return [str(v) for v in features[column]]
    return None


def corrections_kwargs(image, labels=None, points=None, model_labels=None, who: str = "") -> dict:
    """Keyword arguments of ``export_corrections`` from napari layers."""
    kwargs: dict = {"frames": image.data}
    if labels is not None:
        kwargs["labels"] = labels.data
        # the frames painted on (when recorded): exported instead of every frame with labels
        kwargs["edited_frames"] = edited_frames(labels)
    if model_labels is not None:
        kwargs["model_labels"] = model_labels.data
    if points is not None:
        kwargs["edited_point_frames"] = edited_frames(points)
    if points is not None and len(points.data):
        data = np.asarray(points.data)
        if data.shape[1] == 3 and image.ndim == 3:  # via world coordinates: either layer may be ranged
            data = points_on(points, image)
        if data.shape[1] == 2:  # points on a single image: frame 0
            data = np.column_stack([np.zeros(len(data)), data])
        kwargs["points"] = data[:, -3:]
        kwargs["point_classes"] = point_classes_of(points)
    made = next((layer for layer in (labels, points) if layer is not None and provenance_of(layer)), None)
    kwargs["provenance"] = {**(provenance_of(made) if made is not None else {}),
                            "source_video": source_video_of(image) or image.name, "who": who or getpass.getuser()}
    if image.ndim >= 3:  # frame t of the image layer is source frame start + t * step
        kwargs["provenance"]["frame_map"] = {"start": float(np.asarray(image.translate, float)[0]),
                                             "step": float(np.asarray(image.scale, float)[0])}
    return kwargs


def export_edited(out, *, progress=None, cancel=None, **kwargs):
    """Worker body: the frames to export and why (edited frames where the
    layers have an edit record), then ``export_corrections``; returns
    ``(dataset folder, {frame: [why, ...]})``."""
    reasons = corrected_frame_reasons(
        kwargs.get("labels"), len(kwargs["frames"]), kwargs.get("model_labels"), kwargs.get("points"),
        kwargs.get("curves"), edited_frames=kwargs.pop("edited_frames", None),
        edited_point_frames=kwargs.pop("edited_point_frames", None),
    )
    path = export_corrections(out, frame_indices=reasons, progress=progress, cancel=cancel, **kwargs)
    return path, reasons


def describe_reasons(reasons: dict) -> str:
    """'3 frame(s): 2 labels edited on this frame, 1 has points (...)'."""
    counts: dict = {}
    for whys in reasons.values():
        for why in whys:
            counts[why] = counts.get(why, 0) + 1
    return f"{len(reasons)} frame(s): " + ", ".join(f"{n} {why}" for why, n in counts.items())


class CorrectionsWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.last_export: Optional[dict] = None
        self._ranked_layer = None  # the layer whose frames the ranking lists
        v = napari_viewer
        self.image_combo = ComboBox(label="Video", choices=layer_choices(v, Image))
        self.labels_combo = ComboBox(label="Corrected labels", choices=layer_choices(v, Labels, optional=True))
        self.model_combo = ComboBox(
            label="Model output", choices=layer_choices(v, Labels, optional=True),
            tooltip="the model's labels before correction: only frames that differ are exported "
                    "(none: the frames painted on when recorded, else every frame with labels)",
        )
        self.points_combo = ComboBox(label="Points", choices=layer_choices(v, Points, optional=True))
        self.method_combo = ComboBox(
            label="For method", choices=export_methods, value=GENERIC,
            tooltip="the method the dataset is for (recorded with it); a method that learns from curves gets "
                    "curves drawn into the masks",
        )
        self.out_edit = FileEdit(label="Dataset folder", mode="d")
        self.who_edit = LineEdit(label="Annotator", value=getpass.getuser())
        self.export_button = PushButton(text="Export corrections")
        self.status = StatusLabel()

        self.uncertainty_combo = ComboBox(
            label="Probabilities", choices=layer_choices(v, Image, optional=True),
            tooltip="(T, H, W) foreground or (T, C, H, W) class probabilities: low max-probability ranks first",
        )
        self.compare_combo = ComboBox(
            label="Compare with", choices=layer_choices(v, Labels, optional=True),
            tooltip="a second mask set (e.g. backward propagation): ranks by 1 - IoU with the corrected labels",
        )
        self.k_spin = SpinBox(label="How many", value=10, min=1, max=1000)
        self.rank_button = PushButton(text="Frames to correct next")
        self.frame_list = QListWidget()
        self.frame_list.itemClicked.connect(self._jump_to)
        self.export_button.changed.connect(self.export)
        self.rank_button.changed.connect(self.rank)
        self.extend([
            self.image_combo, self.labels_combo, self.model_combo, self.points_combo, self.method_combo,
            self.out_edit, self.who_edit, self.export_button, self.status,
            self.uncertainty_combo, self.compare_combo, self.k_spin, self.rank_button,
        ])
        self.native.layout().addWidget(self.frame_list)
        connect_layer_refresh(v, self)
        record_viewer_edits(v)  # "export what was edited"
        # autosaved snapshots of the chosen video, restorable as layers
        from .autosave_restore import AutosaveRestoreSection

        self.restore_section = AutosaveRestoreSection(v, lambda: source_video_of(self.image_combo.value))
        self.native.layout().addWidget(self.restore_section.native)
        self.image_combo.changed.connect(self.restore_section.refresh)

    # ------------------------------------------------------------------ export
    def export(self, _=None):
        image = self.image_combo.value
        if image is None:
            show_error("Corrections: choose the video (image) layer first")
            return None
        labels, points = self.labels_combo.value, self.points_combo.value
        if labels is None and points is None:
            show_error("Corrections: choose a labels or points layer holding the corrections")
            return None
        out = Path(str(self.out_edit.value))
        if str(self.out_edit.value) in ("", "."):
            show_error("Corrections: choose a dataset folder to export into")
            return None
        kwargs = corrections_kwargs(image, labels, points, self.model_combo.value, self.who_edit.value)
        self.status.value = "exporting..."
        self.export_button.enabled = False

        def done(result):
            path, reasons = result
            self.export_button.enabled = True
            self.last_export = reasons
            what = describe_reasons(reasons)
            self.status.value = f"exported {what} to {path}"
            show_info(f"Corrections exported as a training dataset: {path} ({what})")

        self.worker, _ = run_in_worker(export_edited, out, method=self.method_combo.value, on_done=done,
                                       description="Export corrections", owner=self, **kwargs)

        def failed(exc) -> None:  # run_in_worker showed the notification
            self.export_button.enabled = True
            self.status.value = f"export failed: {exc}"

        self.worker.errored.connect(failed)
        return self.worker

    # ------------------------------------------------------------------ ranking
    def rank(self, _=None):
        k = int(self.k_spin.value)
        labels, other, probs = self.labels_combo.value, self.compare_combo.value, self.uncertainty_combo.value
        if labels is not None and other is not None:
            args, kwargs = (labels.data, k), {"other_masks": other.data}
            self._ranked_layer = labels
        elif probs is not None:
            args, kwargs = (probs.data, k), {}
            self._ranked_layer = probs
        else:
            show_error("Frames to correct next: choose a probability layer, or corrected labels and a second "
                       "mask set to compare with")
            return None

        def ranking(*a, progress=None, cancel=None, **kw):
            return rank_frames_by_uncertainty(*a, **kw)

        self.worker, _ = run_in_worker(ranking, *args, on_done=self.show_ranking, description="Rank frames", owner=self,
                                       **kwargs)
        return self.worker

    def show_ranking(self, ranked) -> None:
        self.frame_list.clear()
        for frame, score in ranked:
            item = QListWidgetItem(f"frame {frame}  (uncertainty {score:.3f})")
            item.setData(256, int(frame))  # Qt.UserRole
            self.frame_list.addItem(item)

    def _jump_to(self, item: Any) -> None:
        frame = item.data(256)
        layer = self._ranked_layer
        if frame is not None and layer is not None and layer in self.viewer.layers:
            show_frame(self.viewer, layer, int(frame))  # the layer's frame, wherever it sits in time
        elif frame is not None:
            self.viewer.dims.set_current_step(0, int(frame))
