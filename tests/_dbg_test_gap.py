import time, numpy as np
import test_training_widget as t
from test_training_widget import weights_dir  # noqa
from napari_surgseg.widgets import training as tr

def test_dbg(make_napari_viewer, qtbot, tmp_path, weights_dir):
    slow = []
    orig_poll = tr.TrainingWidget.poll
    def poll(self):
        t0 = time.perf_counter(); c0=time.thread_time(); orig_poll(self); d = time.perf_counter() - t0
        slow.append(("poll", round(d,3), round(time.thread_time()-c0,3), t0))
    tr.TrainingWidget.poll = poll
    import os
    if os.environ.get("NORENDER"): tr.LossPlot.redraw = lambda self: True
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
    timer = QTimer(); timer.setInterval(10); timer.timeout.connect(lambda: ticks.append((time.perf_counter(), time.thread_time()))); timer.start()
    qtbot.wait(3000)
    base = np.diff([x[0] for x in ticks]); print("baseline idle max gap", base.max(), np.percentile(base, 99))
    ticks.clear()
    w.start()
    qtbot.waitUntil(lambda: w.process is not None, timeout=30000)
    ts = time.perf_counter()
    qtbot.waitUntil(lambda: not w.running, timeout=120000)
    te = time.perf_counter()
    d = [x for x in ticks if ts <= x[0] <= te]
    g = np.diff([x[0] for x in d]); c = np.diff([x[1] for x in d])
    for i in np.argsort(g)[-6:]:
        print("gap", round(g[i],3), "cpu in gap", round(c[i],3), "at", round(d[i][0]-ts,3))
    for s in slow:
        if s[1] > 0.02: print(s[0], s[1], s[2], "at", round(s[3]-ts,3))
