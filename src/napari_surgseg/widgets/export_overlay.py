"""Dock widget: export an image layer with a labels layer and/or a points
layer drawn on as an H.264 MP4 (core: ``export_overlay_video``).

Layers are chosen in combo boxes filled from the viewer (never by name); the
export streams frame by frame in a worker with a progress bar and a Cancel
button. Label colours are the ones napari shows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, PushButton
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info

from surgseg_core.io.export import export_overlay_video

from .._workers import run_in_worker
from .base import StatusLabel, layer_choices, provenance_of


class ExportOverlayWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self._token = None

        self.image_combo = ComboBox(label="Video", choices=layer_choices(self.viewer, Image))
        self.labels_combo = ComboBox(label="Labels", choices=layer_choices(self.viewer, Labels, optional=True))
        self.points_combo = ComboBox(label="Points", choices=layer_choices(self.viewer, Points, optional=True))
        self.out_edit = FileEdit(label="Output", mode="w", filter="*.mp4")
        self.alpha_slider = FloatSlider(label="Label opacity", value=0.5, min=0.0, max=1.0, step=0.05)
        self.fps_spin = FloatSpinBox(
            label="fps (0 = video's)", value=0.0, min=0.0, max=1000.0, step=1.0,
            tooltip="0 keeps real time: the video's frame rate divided by the stride it was opened with",
        )
        self.radius_spin = FloatSpinBox(label="Point radius", value=4.0, min=1.0, max=50.0, step=1.0)
        self.export_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = StatusLabel()
        self.export_button.changed.connect(self.export)
        self.image_combo.changed.connect(self._suggest_output)
        self.cancel_button.changed.connect(self.cancel)
        self.extend(
            [
                self.image_combo,
                self.labels_combo,
                self.points_combo,
                self.out_edit,
                self.alpha_slider,
                self.fps_spin,
                self.radius_spin,
                self.export_button,
                self.cancel_button,
                self.status,
            ]
        )
        # Works docked or not: refresh the layer lists whenever layers change.
        for event in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(self.viewer.layers.events, event, None)
            if emitter is not None:
                emitter.connect(self._refresh)

    # ------------------------------------------------------------------ layer combos
    def _refresh(self, event=None) -> None:
        self.reset_choices()
        self._suggest_output()

    def _suggest_output(self, _=None) -> None:
        """Prefill ``<video>_overlay.mp4`` next to the source video (never overwrite a user's choice)."""
        image = self.image_combo.value
        if image is None or str(self.out_edit.value) not in ("", "."):
            return
        source = image.metadata.get("source_path") if isinstance(image.metadata, dict) else None
        if source:
            src = Path(source)
            folder = src if src.is_dir() else src.parent
            self.out_edit.value = folder / f"{src.stem}_overlay.mp4"

    # ------------------------------------------------------------------ export
    def export(self, _=None) -> None:
        image: Optional[Image] = self.image_combo.value
        if image is None:
            show_error("Export overlay: add or choose a video (image) layer first")
            return
        out = Path(str(self.out_edit.value)) if str(self.out_edit.value) not in ("", ".") else None
        if out is None:
            show_error("Export overlay: choose an output .mp4 file")
            return
        if out.suffix.lower() != ".mp4":
            out = out.with_suffix(".mp4")
        labels: Optional[Labels] = self.labels_combo.value
        points: Optional[Points] = self.points_combo.value
        kwargs: dict[str, Any] = {
            "alpha": float(self.alpha_slider.value),
            "fps": float(self.fps_spin.value) or None,
            "point_radius": float(self.radius_spin.value),
        }
        if labels is not None:
            kwargs["labels"] = labels.data[0] if labels.multiscale else labels.data
            kwargs["colors"] = _label_colors(labels)
        if points is not None and len(points.data):
            kwargs["points"] = np.asarray(points.data)
            kwargs["point_color"] = np.asarray(points.face_color)[:, :3]
        # the MP4's provenance sidecar: the drawn layers' model runs (labels first)
        kwargs["provenance"] = {**(provenance_of(points) if points is not None else {}),
                                **(provenance_of(labels) if labels is not None else {}),
                                "layers": {"video": image.name, "labels": getattr(labels, "name", None),
                                           "points": getattr(points, "name", None)}}
        video = image.data[0] if image.multiscale else image.data
        self.export_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"exporting {out.name}…"
        self.worker, self._token = run_in_worker(
            export_overlay_video, video, out, on_done=self._done, description="exporting overlay", owner=self,
            progress_unit="frames", **kwargs
        )
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)

    def _failed(self, exc) -> None:  # run_in_worker showed the notification
        from surgseg_core.errors import Cancelled

        self.status.value = "export stopped" if isinstance(exc, Cancelled) else f"export failed: {exc}"

    def cancel(self, _=None) -> None:
        if self._token is not None:
            self._token.cancel()

    def _done(self, path) -> None:
        self.status.value = f"wrote {Path(path).name}"
        show_info(f"Overlay video written to {path}")

    def _finished(self) -> None:
        self.export_button.enabled = True
        self.cancel_button.enabled = False
        if self.status.value.startswith("exporting"):
            self.status.value = "export stopped"
        self._token = None


def _label_colors(layer: Labels):
    """Colour lookup with the layer's own colours (read-only; safe off the GUI thread)."""

    def lookup(label: int):
        color = layer.get_color(label)
        return None if color is None else np.asarray(color)[:3]

    return lookup
