"""Dock widget: train a method from napari.

Training runs in a separate process (:class:`TrainingProcess`, ``python -m
surgseg_core.training.worker``): the GUI never blocks and the GPU memory is
freed when it ends. A QTimer polls the process's events to drive a napari
progress bar and a live loss/metric plot (drawn with matplotlib by the
training process, shown here as an image); Stop asks the process to finish
its step, save ``last.pt`` and exit. Errors arrive as notifications with the
trainer's message. Finished weights are registered in the weights registry
(so method widgets list them) and announced through ``trained``.
"""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

from surgseg_core.datasets import export_corrections
from surgseg_core.training.method import available_methods, get_method, method_reference
from surgseg_core.training.process import TrainingProcess

from .._workers import RunProgress, run_in_worker
from .base.status import StatusLabel
from .base import connect_layer_refresh, device_choices, layer_choices
from .corrections import corrections_kwargs

SOURCE_FOLDER = "dataset folder"
SOURCE_CORRECTIONS = "corrections in this viewer"


def default_run_dir(method: str) -> Path:
    from platformdirs import user_data_dir

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(user_data_dir("surgseg")) / "runs" / f"{method.split(':')[-1]}-{stamp}"


class _Signals(QObject):
    trained = Signal(str)  # path of the best checkpoint


class LossPlot(QLabel):
    """Live loss/metric plot: the training process draws the curves with
    matplotlib (``surgseg_core.training.curves``) and this label shows the
    PNG. Drawing them here, even in a thread, stalled napari for 100-400 ms
    per redraw on a busy machine (Python time under the GIL); loading a
    small PNG takes a few ms. The numbers are kept too (``steps``/``losses``,
    ``epochs``/``metrics``) for the status line and for tests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumSize(200, 140)
        # the PNG is scaled to the width the dock gives: its pixel size must not widen the dock
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._pixmap: Optional[QPixmap] = None
        self.setText("loss curve appears here during training")
        self.steps: List[float] = []
        self.losses: List[float] = []
        self.epochs: List[float] = []
        self.metrics: List[float] = []
        self.metric_name = "metric"
        self.shown = 0

    def clear_data(self, metric_name: str = "metric") -> None:
        self.steps, self.losses, self.epochs, self.metrics = [], [], [], []
        self.metric_name = metric_name

    def add_step(self, step: float, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def add_epoch(self, step: float, value: Optional[float]) -> None:
        if value is not None:
            self.epochs.append(step)
            self.metrics.append(value)

    def show_png(self, path: str) -> None:
        pixmap = QPixmap(str(path))
        if not pixmap.isNull():
            self._pixmap = pixmap
            self._fit()
            self.shown += 1

    def _fit(self) -> None:
        if self._pixmap is not None:
            width = max(self.width(), self.minimumWidth())
            self.setPixmap(self._pixmap.scaledToWidth(min(width, self._pixmap.width()),
                                                      Qt.TransformationMode.SmoothTransformation))

    def heightForWidth(self, width: int) -> int:  # keep the plot's aspect ratio
        if self._pixmap is None or self._pixmap.width() == 0:
            return super().heightForWidth(width)
        return int(min(width, self._pixmap.width()) * self._pixmap.height() / self._pixmap.width())

    def hasHeightForWidth(self) -> bool:
        return self._pixmap is not None

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()


class TrainingWidget(Container):
    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.process: Optional[TrainingProcess] = None
        self._signals = _Signals()
        self.trained = self._signals.trained
        self._bar = None
        self._got_final = False
        self._export_worker = None
        self.run_dir: Optional[Path] = None

        methods = available_methods()
        self.method_combo = ComboBox(label="Method", choices=methods, value=methods[0] if methods else None)
        self.source_combo = ComboBox(label="Train on", choices=[SOURCE_FOLDER, SOURCE_CORRECTIONS],
                                     value=SOURCE_FOLDER)
        self.data_edit = FileEdit(label="Dataset folder", mode="d",
                                  tooltip="image_mask layout: images/<name>.png|jpg and masks/<name>.png")
        self.image_combo = ComboBox(label="Video", choices=layer_choices(napari_viewer, Image))
        self.labels_combo = ComboBox(label="Corrected labels", choices=layer_choices(napari_viewer, Labels, True))
        self.points_combo = ComboBox(label="Points", choices=layer_choices(napari_viewer, Points, True))
        self.base_edit = LineEdit(label="Base weights", value="",
                                  tooltip="checkpoint file or registered weights name to start from (optional)")
        self.epochs_spin = SpinBox(label="Epochs", value=10, min=1, max=100000)
        self.batch_spin = SpinBox(label="Batch size", value=4, min=1, max=4096)
        self.lr_edit = LineEdit(label="Learning rate", value="1e-4", tooltip="e.g. 1e-4 or 0.0003")
        self.device_combo = ComboBox(label="Device", choices=device_choices(), value="auto")
        self.run_edit = LineEdit(label="Run folder", value="", tooltip="empty: a new folder under the user data dir")
        self.name_edit = LineEdit(label="Register as", value="", tooltip="weights name (empty: run folder name)")
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.status = StatusLabel()
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.source_combo.changed.connect(self._update_source)
        self.extend([
            self.method_combo, self.source_combo, self.data_edit, self.image_combo, self.labels_combo,
            self.points_combo, self.base_edit, self.epochs_spin, self.batch_spin, self.lr_edit, self.device_combo,
            self.run_edit, self.name_edit, self.start_button, self.stop_button, self.status,
        ])
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)
        # a child of the widget: it dies with it, so no poll runs on a closed (deleted) widget
        self.timer = QTimer(self.native)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.poll)
        connect_layer_refresh(napari_viewer, self)
        self._update_source()
        self.extra_config: Dict[str, Any] = {}  # advanced keys (tests, power users)
        self.native.destroyed.connect(lambda *_: self.shutdown())

    # ------------------------------------------------------------------ UI state
    def _update_source(self, _=None) -> None:
        corrections = self.source_combo.value == SOURCE_CORRECTIONS
        self.data_edit.visible = not corrections
        for w in (self.image_combo, self.labels_combo, self.points_combo):
            w.visible = corrections

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.stop_button.enabled = running

    @property
    def running(self) -> bool:
        return self.process is not None and not self.process.finished()

    # ------------------------------------------------------------------ start
    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {
            "epochs": int(self.epochs_spin.value),
            "batch_size": int(self.batch_spin.value),
            "lr": self._learning_rate(),
            "device": self.device_combo.value,
        }
        base = self.base_edit.value.strip()
        if base:
            try:
                key = get_method(self.method_combo.value).base_weights_key
            except Exception:  # unknown method: the start button reports it
                key = "init_weights"
            cfg[key] = base
        cfg.update(self.extra_config)
        return cfg

    def _learning_rate(self) -> float:
        text = self.lr_edit.value.strip()
        try:
            lr = float(text)
        except ValueError:
            raise ValueError(f"learning rate {text!r} is not a number (e.g. 1e-4)") from None
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {text}")
        return lr

    def start(self, _=None) -> None:
        if self.running or self._export_worker is not None:
            show_warning("Training is already running")
            return
        method = self.method_combo.value
        if not method:
            show_error("Training: no method available")
            return
        self.run_dir = Path(self.run_edit.value.strip()) if self.run_edit.value.strip() else default_run_dir(method)
        try:
            cfg = self.config()
        except ValueError as exc:
            show_error(f"Training: {exc}")
            return
        if self.source_combo.value == SOURCE_CORRECTIONS:
            image = self.image_combo.value
            if image is None or (self.labels_combo.value is None and self.points_combo.value is None):
                show_error("Training: choose the video layer and a labels or points layer with corrections")
                return
            kwargs = corrections_kwargs(image, self.labels_combo.value, self.points_combo.value)
            dataset = self.run_dir / "corrections_dataset"
            self.status.value = "exporting corrections..."
            self._set_running(True)

            def exported(path):
                self._export_worker = None
                self._launch(method, {**cfg, "data_root": str(path)})

            def failed(*_):
                self._export_worker = None
                self._set_running(False)

            self._export_worker, _ = run_in_worker(export_corrections, dataset, method=method,
                                                   on_done=exported, description="Export corrections", owner=self,
                                                   **kwargs)
            self._export_worker.errored.connect(failed)
            return
        data = str(self.data_edit.value)
        if data in ("", ".") and "data_root" not in cfg:
            show_error("Training: choose a dataset folder (images/ and masks/)")
            return
        if data not in ("", "."):
            cfg["data_root"] = data
        self._launch(method, cfg)

    def _launch(self, method: str, cfg: Dict[str, Any]) -> None:
        assert self.run_dir is not None
        base = cfg.get("init_weights") or cfg.get("base_weights")
        register = {"name": self.name_edit.value.strip() or None, "base": base}
        try:
            self.process = TrainingProcess(method_reference(method), cfg, self.run_dir, register=register,
                                           sys_path=[p for p in sys.path if p])
        except OSError as exc:
            show_error(f"Training: cannot start the training process: {exc}")
            self._set_running(False)
            return
        self._got_final = False
        self.plot.clear_data()
        # feedback from the first second: the process needs seconds to start and
        # load PyTorch, then the data and the model; its stage messages follow
        self._close_bar()
        self._run_bar().update(0, None, "starting the training process")
        self.status.value = f"starting the training process for {method} (run folder {self.run_dir})..."
        self._set_running(True)
        self.timer.start()

    # ------------------------------------------------------------------ stop
    def stop(self, _=None) -> None:
        if self.process is not None and self.process.running:
            self.process.stop()
            self.status.value = "stopping after this step (saving a checkpoint)..."
            self.stop_button.enabled = False

    def shutdown(self) -> None:
        """Widget closed: stop training cleanly; kill it if it hangs."""
        proc = self.process
        if proc is not None and proc.running:
            proc.stop()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
        self.timer.stop()

    # ------------------------------------------------------------------ events
    def poll(self) -> None:
        proc = self.process
        if proc is None:
            self.timer.stop()
            return
        for event in proc.poll():
            self._handle(event)
        if proc.finished():
            for event in proc.poll():
                self._handle(event)
            self.timer.stop()
            self._close_bar()
            self._set_running(False)
            if not self._got_final:
                tail = next((line for line in reversed(proc.stderr_tail) if line.strip()), "")
                show_error(f"Training process ended unexpectedly (exit code {proc.returncode}). {tail}")
                self.status.value = "training process ended unexpectedly"
            proc.cleanup()

    def _handle(self, ev: Dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "start":
            self.plot.clear_data(ev.get("monitor", "metric"))
            total = ev["epochs"] * ev["batches_per_epoch"]
            self._run_bar().update(ev.get("start_epoch", 0) * ev["batches_per_epoch"], total,
                                   f"{ev['epochs']} epoch(s)")
            self.status.value = f"training {ev.get('method')} ({ev['epochs']} epochs)"
        elif kind == "progress":
            message = ev.get("message") or ""
            bar = self._run_bar()
            if ev.get("total") is None:  # a stage before the first batch: say it in the status too
                bar.update(bar.done, bar.total, message)
                if message:
                    self.status.value = f"{message}..."
            else:
                bar.update(int(ev["done"]), int(ev["total"]), message)
        elif kind == "step":
            loss = ev.get("loss")
            if isinstance(loss, (int, float)):
                self.plot.add_step(ev["step"], float(loss))
        elif kind == "epoch":
            name = ev.get("monitor") or self.plot.metric_name
            self.plot.metric_name = name
            value = ev.get(name)
            self.plot.add_epoch(ev["step"], float(value) if isinstance(value, (int, float)) else None)
            self.status.value = f"epoch {ev['epoch'] + 1}: train loss {ev.get('train_loss', float('nan')):.4g}"
        elif kind == "plot":
            self.plot.show_png(ev["path"])
        elif kind == "error":
            self._got_final = True
            show_error(f"Training stopped: {ev.get('message')}")
            self.status.value = f"error: {ev.get('message')}"
        elif kind == "warning":
            show_warning(str(ev.get("message")))
        elif kind == "registered":
            show_info(f"New weights registered as {ev.get('name')!r}; method widgets now list them")
        elif kind == "finished":
            self._got_final = True
            how = "stopped" if ev.get("stopped") == "cancelled" else "finished"
            if how == "stopped" and self._bar is not None:  # the bar's last words: how far it got
                self._bar.close(f"stopped after {self._bar.count()}")
                self._bar = None
            self.status.value = f"{how}: best checkpoint {ev.get('best_checkpoint')}"
            show_info(f"Training {how}. Best checkpoint: {ev.get('best_checkpoint')}")
            self.trained.emit(str(ev.get("best_checkpoint")))

    def _run_bar(self) -> RunProgress:
        """The run's one progress bar (napari follows its update() events)."""
        if self._bar is None:
            self._bar = RunProgress("Training", unit="steps")
        return self._bar

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
