"""Dock widget: pick a video (file or frame folder), see its metadata, choose a
frame range / stride / downscale and open it as a lazy RGB layer.

Probing and opening run in a worker (``run_in_worker``) so a slow network
drive or a variable-frame-rate index never freezes napari.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from napari.layers import Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from surgseg_core.io import open_video
from surgseg_core.io.open import VIDEO_SUFFIXES

from .base.layers import announce_video, video_layer_data
from .._workers import run_in_worker
from .base.layers import PLAYBACK_PREFETCH
from .base.status import StatusLabel

_VIDEO_FILTER = ("Videos and TIFF stacks (" + " ".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES)) + " *.tif *.tiff)"
                 ";;All files (*)")


def probe_video(path: str, *, progress=None, cancel=None):
    """Metadata of ``path`` (opens and closes it; decodes no frames)."""
    src = open_video(path)
    try:
        return src.metadata
    finally:
        src.close()


def open_selection(
    path: str,
    *,
    start: float = 0,
    end: Optional[float] = None,
    unit: str = "frames",
    step: int = 1,
    downscale: int = 1,
    fps: Optional[float] = None,
    progress=None,
    cancel=None,
):
    """``open_video`` with the range given in frames (end exclusive) or
    seconds; ``fps`` gives frame folders and TIFF stacks a timing (videos
    keep their own)."""
    if unit == "seconds":
        return open_video(path, start_time=start, end_time=end, step=step, downscale=downscale, fps=fps,
                          prefetch=PLAYBACK_PREFETCH)
    stop = None if end is None else int(round(end))
    return open_video(path, start=int(round(start)), stop=stop, step=step, downscale=downscale, fps=fps,
                      prefetch=PLAYBACK_PREFETCH)


class VideoLoaderWidget(QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.metadata = None  # VideoMetadata of the probed file
        self._probe_id = 0  # a late answer about an earlier path must not win
        self.probe_worker = None
        self.open_worker = None

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("video file, TIFF stack or folder of numbered frames")
        self.path_edit.setToolTip(
            "A folder holding several image series takes a glob, e.g. /data/seq/frame_*_endo.png"
        )
        self.path_edit.editingFinished.connect(self._on_path_edited)
        file_btn = QPushButton("File…")
        file_btn.clicked.connect(self._browse_file)
        dir_btn = QPushButton("Folder…")
        dir_btn.clicked.connect(self._browse_folder)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit)
        path_row.addWidget(file_btn)
        path_row.addWidget(dir_btn)

        self.status = StatusLabel("No video chosen.")
        self.info_label = self.status.native

        self.unit_combo = QComboBox()
        self.unit_combo.addItems(["frames", "seconds"])
        self.unit_combo.currentTextChanged.connect(self._on_unit_changed)
        self.start_spin = QDoubleSpinBox()
        self.end_spin = QDoubleSpinBox()
        self.end_spin.setSpecialValueText("end")  # 0 (the minimum) means "to the end"
        self.end_spin.setToolTip("first frame/time NOT included; 'end' keeps everything after start")
        for spin in (self.start_spin, self.end_spin):
            spin.setRange(0, 1e9)
        self.step_spin = QSpinBox()
        self.step_spin.setRange(1, 100000)
        self.step_spin.setToolTip("keep every N-th frame")
        self.downscale_spin = QSpinBox()
        self.downscale_spin.setRange(1, 32)
        self.downscale_spin.setToolTip("divide width and height by this factor")
        self.fps_spin = QDoubleSpinBox()
        self.fps_spin.setRange(0, 1000)
        self.fps_spin.setDecimals(3)
        self.fps_spin.setSpecialValueText("from file")  # 0: videos know their rate; folders then have none
        self.fps_spin.setToolTip("frame rate of a frame folder or TIFF stack (videos use their own)")
        self._on_unit_changed("frames")

        form = QFormLayout()
        form.addRow("Range in", self.unit_combo)
        form.addRow("Start", self.start_spin)
        form.addRow("End", self.end_spin)
        form.addRow("Stride", self.step_spin)
        form.addRow("Downscale", self.downscale_spin)
        form.addRow("Frame rate", self.fps_spin)

        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open)

        layout = QVBoxLayout(self)
        layout.addLayout(path_row)
        layout.addWidget(self.info_label)
        layout.addLayout(form)
        layout.addWidget(self.open_button)
        layout.addStretch(1)

    # ------------------------------------------------------------------ path + probe
    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open surgical video", "", _VIDEO_FILTER)
        if path:
            self.set_path(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of numbered frames")
        if path:
            self.set_path(path)

    def _on_path_edited(self) -> None:
        text = self.path_edit.text().strip()
        if text and (self.metadata is None or str(self.metadata.path) != text):
            self.set_path(text)

    def set_path(self, path: Any) -> None:
        """Choose a video and read its metadata in the background."""
        self.path_edit.setText(str(path))
        self.metadata = None
        self.status.value = "Reading metadata…"
        self._probe_id += 1
        probe_id = self._probe_id

        def done(meta) -> None:
            if probe_id == self._probe_id:
                self._show_metadata(meta)

        def failed(exc) -> None:
            if probe_id == self._probe_id:
                self.status.value = f"Cannot open: {exc}"

        self.probe_worker, _ = run_in_worker(
            probe_video, str(path), on_done=done, description="reading video metadata", owner=self
        )
        self.probe_worker.errored.connect(failed)

    def _show_metadata(self, meta) -> None:
        self.metadata = meta
        fps = f"{meta.fps:.3g} fps" if meta.fps else "no frame rate (set one below to use seconds)"
        duration = f"{meta.duration:.2f} s" if meta.duration else "unknown duration"
        vfr = ", variable frame rate" if meta.variable_frame_rate else ""
        damage = f"\nDamaged: {meta.damage}" if meta.damage else ""
        self.status.value = (
            f"{Path(meta.path).name}: {meta.source_width}x{meta.source_height}, {fps}{vfr}, "
            f"{duration}, {meta.source_n_frames} frames, codec {meta.codec or 'n/a'}{damage}"
        )
        self._on_unit_changed(self.unit_combo.currentText())

    def _on_unit_changed(self, unit: str) -> None:
        seconds = unit == "seconds"
        meta = self.metadata
        if seconds:
            top = float(meta.duration) if meta is not None and meta.duration else 1e9
        else:
            top = float(meta.source_n_frames) if meta is not None else 1e9
        for spin in (self.start_spin, self.end_spin):
            spin.setDecimals(3 if seconds else 0)
            spin.setSingleStep(0.5 if seconds else 1)
            spin.setMaximum(top)
        self.start_spin.setSuffix(" s" if seconds else "")
        self.end_spin.setSuffix(" s" if seconds else "")

    # ------------------------------------------------------------------ open
    def selection(self) -> dict:
        end = self.end_spin.value()
        return {
            "start": self.start_spin.value(),
            "end": None if end == self.end_spin.minimum() else end,
            "unit": self.unit_combo.currentText(),
            "step": self.step_spin.value(),
            "downscale": self.downscale_spin.value(),
            "fps": self.fps_spin.value() or None,
        }

    def open(self) -> None:
        path = self.path_edit.text().strip()
        if not path:
            show_error("Load surgical video: choose a video file or frame folder first")
            return
        sel = self.selection()
        if sel["end"] is not None and sel["end"] <= sel["start"]:
            show_error(f"Load surgical video: end ({sel['end']:g}) must be after start ({sel['start']:g})")
            return
        self.open_button.setEnabled(False)
        self.open_worker, _ = run_in_worker(
            open_selection, path, on_done=self._add_layer, description="opening video", owner=self, **sel
        )
        self.open_worker.finished.connect(lambda: self.open_button.setEnabled(True))

    def _add_layer(self, source) -> None:
        data, kwargs, layer_type = video_layer_data(source)
        layer = self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
        m = source.metadata
        span = f"source frames {m.start}-{int(m.source_indices[-1])}" + (f" every {m.step}" if m.step > 1 else "")
        show_info(f"opened {layer.name}: {len(source)} frames ({span} of {m.source_n_frames}), {m.width}x{m.height}")
        announce_video(source, self.viewer)
