import time, numpy as np
import test_training_widget as t
from test_training_widget import weights_dir  # noqa
from napari_surgseg.widgets import training as tr

def test_dbg(make_napari_viewer, qtbot, tmp_path, weights_dir):
    slow = []
    orig_poll = tr.TrainingWidget.poll
    orig_handle = tr.TrainingWidget._handle
    def poll(self):
        t0 = time.perf_counter(); orig_poll(self); d = time.perf_counter() - t0
        if d > 0.02: slow.append(("poll", round(d,3), t0))
    def handle(self, ev):
        t0 = time.perf_counter(); orig_handle(self, ev); d = time.perf_counter() - t0
        if d > 0.02: slow.append((ev.get("type"), round(d,3), t0))
    tr.TrainingWidget.poll = poll; tr.TrainingWidget._handle = handle
    orig_draw = tr.FigureCanvasAgg.draw
    def draw(self):
        t0 = time.perf_counter(); orig_draw(self); slow.append(("draw", round(time.perf_counter()-t0,3), t0))
    tr.FigureCanvasAgg.draw = draw
    viewer = make_napari_viewer()
    frames, labels = t._clip()
    viewer.add_image(frames, name="clip", rgb=True)
    viewer.add_labels(labels, name="corrected")
    w = t._training_widget(viewer, tmp_path, sleep_per_step=0.05)
    w.source_combo.value = "corrections in this viewer"
    w.labels_combo.value = viewer.layers["corrected"]
    w.epochs_spin.value = 3
    ticks = []
    from qtpy.QtCore import QTimer
    timer = QTimer(); timer.setInterval(10); timer.timeout.connect(lambda: ticks.append(time.perf_counter())); timer.start()
    w.start()
    qtbot.waitUntil(lambda: w.process is not None, timeout=30000)
    ts = time.perf_counter()
    qtbot.waitUntil(lambda: not w.running, timeout=120000)
    te = time.perf_counter()
    d = [x for x in ticks if ts <= x <= te]
    g = np.diff(d)
    for i in np.argsort(g)[-6:]:
        print("gap", round(g[i],3), "at", round(d[i]-ts,3))
    for s in slow: print(s[0], s[1], "at", round(s[2]-ts,3))
