"""A napari session driven the way a user drives it (for test_fresh_napari.py).

Started as a plain script (``python _napari_session.py SPEC.json``) or as
napari's startup script (``python -m napari --settings-path S`` with
``application.startup_script`` pointing here and ``SURGSEG_SESSION_SPEC`` set).
Nothing is imported before napari (no triton, no plugin): the plugin loads
only when the steps open its sample data (File > Open Sample) and add its
dock widgets (Plugins menu), after napari has shown its OpenGL canvas.

Each step prints ``STEP <name> START`` / ``STEP <name> OK`` (flushed), so a
test can name the widget a crash happened in; a failed check prints
``STEP <name> FAIL: ...`` and the process exits with 1. Steps are generators
that yield conditions to wait for while the Qt event loop runs.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

PLUGIN = "napari-surgseg"
WAIT_S = 240


def say(text: str) -> None:
    print(text, flush=True)


class Session:
    def __init__(self, viewer, spec: dict) -> None:
        self.viewer = viewer
        self.spec = spec
        self.tmp = Path(spec["tmp"])
        self.failed = False
        self.closed = False
        self.bars: list = []  # the progress bars napari's activity dock shows, with the values it was sent
        self._watch_progress()

    # ------------------------------------------------------------------ helpers
    def _watch_progress(self) -> None:
        """Record what the activity dock's bars are told: it listens to the
        same ``progress._all_instances`` and ``events.value`` (see
        napari/_qt/dialogs/qt_activity_dialog.py)."""
        from napari.utils import progress

        def watch(prog) -> None:
            # (no default arguments in these callbacks: napari inspects their signatures)
            bar = {"name": prog.desc.split(":")[0], "values": [], "total": prog.total, "desc": prog.desc,
                   "closed": False, "prog": prog}
            self.bars.append(bar)

            def on_value(ev) -> None:
                bar["values"].append(int(ev.value))
                bar["total"] = prog.total

            def on_desc(ev) -> None:
                bar["desc"] = ev.value

            prog.events.value.connect(on_value)
            prog.events.description.connect(on_desc)

        def added(event) -> None:
            for prog in event.added:
                watch(prog)
            for prog in event.removed:
                for bar in self.bars:
                    if bar["prog"] is prog:
                        bar["closed"] = True

        progress._all_instances.events.changed.connect(added)

    def dock(self, title: str):
        _, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, title)
        return widget

    def layer(self, name: str):
        return self.viewer.layers[name]

    def sample(self, key: str) -> None:
        if not any(layer.name == {"synthetic_clip": "synthetic clip", "synthetic_liver": "synthetic liver"}[key]
                   for layer in self.viewer.layers):
            self.viewer.open_sample(PLUGIN, key)

    @staticmethod
    def done_flag(worker) -> dict:
        flag = {"done": False}
        worker.finished.connect(lambda: flag.__setitem__("done", True))
        return flag

    def bars_of(self, name: str) -> list:
        return [b for b in self.bars if b["name"] == name]

    def bars_closed(self, name: str) -> bool:
        # the dock's own processEvents() may run a step while a bar is still
        # being updated: the run is over once its bar is closed
        return all(b["closed"] for b in self.bars_of(name))

    def moved(self, name: str) -> bool:
        """One bar for the run, and the dock was sent two or more values."""
        bars = self.bars_of(name)
        return len(bars) == 1 and len(set(bars[0]["values"])) >= 2

    def advanced(self, name: str) -> bool:
        """The run had one bar, and it went up in steps to its total."""
        bars = self.bars_of(name)
        if len(bars) != 1:
            return False
        values, total = bars[0]["values"], bars[0]["total"]
        return len(set(values)) >= 2 and max(values) == total > 0

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(what)

    # ------------------------------------------------------------------ steps
    def step_sample(self):
        self.sample("synthetic_clip")
        self.check(self.layer("synthetic clip").data.shape[0] == 60, "sample clip has 60 frames")
        yield lambda: True

    def step_video_loader(self):
        self.sample("synthetic_clip")
        w = self.dock("Load surgical video")
        w.set_path(self.layer("synthetic clip").metadata["source_path"])
        yield lambda: w.metadata is not None
        w.start_spin.setValue(10)
        w.end_spin.setValue(30)
        before = len(self.viewer.layers)
        w.open()
        yield lambda: len(self.viewer.layers) == before + 1
        self.check(self.viewer.layers[-1].data.shape[0] == 20, "loaded frames 10..30")

    def _tracker(self, last_frame: int):
        self.sample("synthetic_clip")
        w = self.dock("Track with SAM2")
        w.video_combo.value = self.layer("synthetic clip")
        prompts = w.new_prompt_layer()
        prompts.add([0, 120, 160])
        box = w.model_combo.native
        box.setCurrentIndex(box.findText("random tiny (testing)"))
        w.end_spin.value = last_frame
        w.device_combo.value = "cpu"
        w.track()
        self.check(w.worker is not None, "Track started a worker")
        return w

    def step_track(self):
        w = self._tracker(7)
        flag = self.done_flag(w.worker)
        yield lambda: flag["done"] and self.bars_closed("Tracking with SAM2")
        self.check(w.result_layer.metadata["sam2_tracking"]["status"] == "completed",
                   f"tracking completed (status {w.status.value!r})")
        # 9 steps: frames 0..7 forward, then frame 0 again backward (direction "both")
        bars = self.bars_of("Tracking with SAM2")
        self.check(self.advanced("Tracking with SAM2") and bars[0]["total"] == 9,
                   f"one tracking bar, moved to 9/9: {bars}")

    def step_clicks(self):
        """Clicks (RP-SAM2), random tiny model: a click segments frame 0 (refined
        point, line, mask), then Track through video over frames 0..5."""
        self.sample("synthetic_clip")
        w = self.dock("Clicks (RP-SAM2)")
        w.video_combo.value = self.layer("synthetic clip")
        box = w.weights_combo.native
        box.setCurrentIndex(box.findText("random tiny (testing)"))
        w.device_combo.value = "cpu"
        self.viewer.dims.set_current_step(0, 0)
        prompts = w.new_prompt_layer()
        prompts.add([0, 120, 160])
        self.check(w.runs.busy and w.status.value == "encoding frame 0…", f"click started: {w.status.value!r}")
        yield lambda: not w.runs.busy and w.refined_layer is not None
        self.check(len(w.refined_layer.data) == 1 and w.lines_layer.nshapes == 1 and w.result_layer is not None,
                   f"refined point, line and masks layer after the click: {w.status.value!r}")
        w.end_spin.value = 5
        w.track()
        self.check(w.worker is not None, "Track through video started a worker")
        flag = self.done_flag(w.worker)
        yield lambda: flag["done"] and self.bars_closed("Tracking with RP-SAM2")
        self.check(w.result_layer.metadata["rpsam2_clicks"]["status"] == "completed"
                   and w.last_summary["frames_written"] == 6, f"tracked frames 0..5: {w.status.value!r}")

    def step_anatomy(self):
        """Anatomy (F2PASeg): a box per class on frame 0, Propagate over frames 0..4 with the random tiny F2PASeg."""
        import numpy as np

        from surgseg_core.methods.f2paseg.classes import PAS

        self.sample("synthetic_clip")
        w = self.dock("Anatomy (F2PASeg)")
        w.video_combo.value = self.layer("synthetic clip")
        boxes = w.new_box_layer()
        for c, (y0, x0, y1, x1) in {1: (40, 60, 140, 200), 4: (150, 180, 220, 300)}.items():
            w.class_combo.value = c
            boxes.add_rectangles([[[0, y0, x0], [0, y0, x1], [0, y1, x1], [0, y1, x0]]])
        self.check(boxes.features["obj_id"].tolist() == [1, 4], f"boxes carry their class: {boxes.features}")
        box = w.model_combo.native
        box.setCurrentIndex(box.findText("random tiny F2PASeg (testing)"))
        w.end_spin.value = 4
        w.device_combo.value = "cpu"
        w.track()
        self.check(w.worker is not None, f"Propagate started a worker ({w.status.value!r})")
        flag = self.done_flag(w.worker)
        yield lambda: flag["done"] and self.bars_closed("Propagating with F2PASeg")
        layer = w.result_layer
        state = layer.metadata["f2paseg_anatomy"]
        self.check(state["status"] == "completed", f"propagation completed (status {w.status.value!r})")
        values = {int(v) for v in np.unique(layer.data[:5])}
        self.check(values <= {0, *PAS.ids}, f"class ids only: {values}")
        self.check(layer.metadata["provenance"]["class_set"]["name"] == "pas", "class set in the provenance")
        self.check(self.advanced("Propagating with F2PASeg"), f"one bar, moved: {self.bars}")

    def step_liver(self):
        self.sample("synthetic_liver")
        w = self.dock("Liver landmarks")
        w.image_combo.value = self.layer("synthetic liver")
        w.checkpoint_edit.value = self.spec["liver_checkpoint"]
        w.mode_combo.value = "frame range"
        w.start_spin.value, w.end_spin.value = 0, 2  # frames 0..2, both included
        worker = w.run()
        self.check(worker is not None, f"Run started (status {w.status.value!r})")
        flag = self.done_flag(worker)
        yield lambda: flag["done"] and not w._adding_paths and "frame(s)" in w.status.value
        self.check(w.status.value == "landmarks on 3 frame(s)", f"liver status {w.status.value!r}")
        self.check(w.labels_layer.data[:3].any(), "liver labels written")

    def step_tools(self):
        self.sample("synthetic_clip")
        w = self.dock("Tool landmarks")
        w.video_combo.value = self.layer("synthetic clip")
        w.weights_combo.value = "random tiny (testing)"
        w.device_combo.value = "cpu"
        w.threshold_spin.value = 0.0  # random heatmaps: each frame's maximum is a landmark
        w.mode_combo.value = "frame range"
        w.frames.set(0, 2)
        worker = w.run()
        self.check(worker is not None, f"Run started (status {w.status.value!r})")
        flag = self.done_flag(worker)
        # (the bar is recorded once napari has shown it: on a busy machine the run can end first)
        yield lambda: flag["done"] and self.bars_of("Tool landmarks") and self.bars_closed("Tool landmarks")
        self.check(w.status.value.startswith("done: 3 frame(s)"), f"tools status {w.status.value!r}")
        self.check(all(layer.data[:3].any() and not layer.data[3:].any() for layer in w.heat_layers.values()),
                   "heatmaps written for frames 0..2 only")
        frames = {int(round(t)) for t in w.points_layer.data[:, 0]}
        self.check(frames == {0, 1, 2}, f"tips/anchors on frames 0..2: {frames}")
        self.check(self.advanced("Tool landmarks"), f"one tools bar, moved to its total: {self.bars}")

    def step_export_overlay(self):
        self.sample("synthetic_clip")
        w = self.dock("Export overlay video")
        w.image_combo.value = self.layer("synthetic clip")
        w.labels_combo.value = self.layer("instruments (ground truth)")
        out = self.tmp / "overlay.mp4"
        w.out_edit.value = out
        w.export()
        flag = self.done_flag(w.worker)
        yield lambda: flag["done"] and self.bars_closed("exporting overlay")
        self.check(out.is_file() and out.stat().st_size > 0, f"overlay written: {w.status.value!r}")
        self.check(self.advanced("exporting overlay"), f"one export bar, moved: {self.bars}")

    def step_corrections(self):
        self.sample("synthetic_clip")
        w = self.dock("Corrections -> dataset")
        w.image_combo.value = self.layer("synthetic clip")
        w.labels_combo.value = self.layer("instruments (ground truth)")
        out = self.tmp / "corrections"
        w.out_edit.value = out
        worker = w.export()
        self.check(worker is not None, f"export started: {w.status.value!r}")
        flag = self.done_flag(worker)
        yield lambda: flag["done"]
        self.check(any((out / "images").iterdir()), f"corrections exported: {w.status.value!r}")

    def step_train(self):
        from surgseg_core.synth.sample import LIVER_DIR, sample_folder

        w = self.dock("Train a model")
        w.method_combo.value = "liver"
        w.data_edit.value = sample_folder(LIVER_DIR)
        w.device_combo.value = "cpu"
        w.epochs_spin.value = 200
        w.batch_spin.value = 2
        w.run_edit.value = str(self.tmp / "train-run")
        w.extra_config = dict(self.spec.get("train_config", {}))
        w.start()
        # the bar moves with the steps (or the process ended: the check says why)
        yield lambda: self.moved("Training") or (w.process is not None and not w.running)
        self.check(self.moved("Training"),
                   f"one training bar, moved: {self.bars_of('Training')}; status {w.status.value!r}")
        w.stop()
        yield lambda: w.process is not None and w.process.finished() and not w.running
        yield lambda: not w.timer.isActive()
        self.check(w.status.value.startswith("stopped"), f"training stopped: {w.status.value!r}")

    def step_close_mid_track(self):
        w = self._tracker(-1)  # the whole clip: still running when the viewer closes
        updates = []
        w.worker.yielded.connect(updates.append)
        yield lambda: len(updates) >= 3
        self.check(w.worker is not None, "still tracking")
        self.close_viewer()

    def step_close_after_track(self):
        from qtpy import sip
        from qtpy.QtCore import QCoreApplication, QEvent, QThreadPool

        w = self._tracker(1)
        yield lambda: True  # (closing ends the event loop: the step must end in the tick that closes)
        # wait, without serving the event loop, until the run has ended in
        # its thread: its returned/finished signals are queued, undelivered
        deadline = time.monotonic() + WAIT_S
        while QThreadPool.globalInstance().activeThreadCount() and time.monotonic() < deadline:
            time.sleep(0.02)
        # then close the viewer and delete its widgets before they arrive
        self.viewer.close()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
        self.check(sip.isdeleted(w.track_button.native), "the widget was deleted with the viewer")
        # the event loop goes on (IPython's %gui qt, another viewer): the
        # run's queued signals arrive now
        for _ in range(20):
            QCoreApplication.processEvents()
            time.sleep(0.01)
        self.closed = True

    def close_viewer(self) -> None:
        self.closed = True
        self.viewer.close()


def run(viewer, spec: dict) -> None:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    session = Session(viewer, spec)
    steps = list(spec["steps"])
    state = {"gen": None, "name": None, "cond": None, "since": 0.0}

    def fail(message: str) -> None:
        say(f"STEP {state['name']} FAIL: {message}")
        session.failed = True
        timer.stop()
        session.close_viewer()

    def tick() -> None:
        try:
            if state["gen"] is None:
                if not steps or session.closed:
                    timer.stop()
                    if not session.closed:
                        session.close_viewer()
                    return
                state["name"] = steps.pop(0)
                say(f"STEP {state['name']} START")
                state["gen"] = getattr(session, f"step_{state['name']}")()
                state["cond"] = None
            if state["cond"] is not None:
                if not state["cond"]():
                    if time.monotonic() - state["since"] > WAIT_S:
                        fail(f"timed out after {WAIT_S} s")
                    return
            try:
                state["cond"] = next(state["gen"])
                state["since"] = time.monotonic()
            except StopIteration:
                say(f"STEP {state['name']} OK")
                state["gen"] = None
        except Exception:
            fail(traceback.format_exc())

    timer = QTimer(QApplication.instance())
    timer.setInterval(50)
    timer.timeout.connect(tick)
    timer.start()
    return session


def spec_from_env_or_argv() -> dict:
    path = os.environ.get("SURGSEG_SESSION_SPEC") or sys.argv[1]
    return json.loads(Path(path).read_text())


# The same lines serve both starts: as napari's startup script, ``Viewer()``
# returns napari's own viewer and ``napari.run()`` does nothing (napari runs
# the event loop itself, then exits with its own status).
import napari  # noqa: E402

_session = run(napari.Viewer(), spec_from_env_or_argv())
napari.run()
if _session.closed:  # a plain script: the event loop ran and ended here
    say("SESSION END")
    sys.exit(1 if _session.failed else 0)
