"""Autosave of corrections: core snapshots (round trip, manifest, atomicity,
skip when unchanged) and the napari side (edits -> snapshot on disk from a
worker thread, coalescing, one warning on failure, restore as layers)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from surgseg_core.errors import DatasetError
from surgseg_core.io import autosave as core

SOURCE = "/videos/case 01/clip.mp4"


@pytest.fixture(autouse=True)
def _autosave_root(tmp_path, monkeypatch):
    monkeypatch.setenv(core.ENV_DIR, str(tmp_path / "autosave"))
    _stop_earlier_watchers()
    return tmp_path / "autosave"


def _stop_earlier_watchers() -> None:
    """Layers of earlier tests' viewers (a widget test's masks, a run still
    ending) may still be alive and autosave: these tests count saves and
    warnings, so only their own layers may be watched."""
    import sys

    autosave = sys.modules.get("napari_surgseg._autosave")
    for watcher in list(getattr(autosave, "_WATCHERS", {}).values()):
        watcher.disconnect_all()


def _labels(seed=0, shape=(4, 12, 10)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, size=shape).astype(np.uint16)


# ----------------------------------------------------------------------- core
def test_autosave_dir_per_video(_autosave_root, tmp_path):
    a = core.autosave_dir(SOURCE)
    assert a.parent == _autosave_root
    assert a.name.startswith("clip.mp4-")
    assert core.autosave_dir(SOURCE) == a  # stable
    assert core.autosave_dir("/other/case/clip.mp4") != a  # same file name, other video
    assert core.autosave_dir(None) == _autosave_root / core.NO_SOURCE


def test_labels_points_shapes_round_trip_with_manifest():
    folder = core.autosave_dir(SOURCE)
    labels = _labels()
    core.save_layer_snapshot(folder, "masks", "labels", labels, metadata={"model": "x", "arr": np.arange(3)},
                             source=SOURCE, layer_kwargs={"scale": [1.0, 2.0, 2.0]})
    pts = np.array([[0, 3.5, 7.25], [2, 1.0, 9.0]])
    feats = {"obj_id": np.array([1, 2]), "positive": np.array([True, False])}
    core.save_layer_snapshot(folder, "prompts", "points", pts, features=feats, source=SOURCE)
    shapes = [np.array([[1, 2.0, 3.0], [1, 4.0, 5.5], [1, 6.0, 1.0]]), np.array([[3, 0.0, 0.0], [3, 2.0, 2.0]])]
    core.save_layer_snapshot(folder, "curves/liver", "shapes", shapes, shape_types=["polygon", "path"],
                             features={"class_id": [1, 3]}, edge_colors=[[1, 0, 0, 1], [0, 0, 1, 1]],
                             layer_kwargs={"ndim": 3}, source=SOURCE)

    manifest = json.loads((folder / core.MANIFEST).read_text())
    assert set(manifest["layers"]) == {"masks", "prompts", "curves/liver"}
    assert manifest["source"] == SOURCE
    assert manifest["layers"]["masks"]["n_frames"] == 4
    assert manifest["layers"]["curves/liver"]["n_frames"] == 4  # highest frame 3 + 1
    assert all("saved_at" in e and (folder / e["file"]).is_file() for e in manifest["layers"].values())

    entries = {e["name"]: e for e in core.list_snapshots(folder)}
    data, kw, kind = core.load_snapshot(entries["masks"])
    assert kind == "labels" and data.dtype == labels.dtype and np.array_equal(data, labels)
    assert kw["name"] == "masks" and kw["scale"] == [1.0, 2.0, 2.0]
    assert kw["metadata"]["model"] == "x" and kw["metadata"]["arr"] == [0, 1, 2]

    data, kw, kind = core.load_snapshot(entries["prompts"])
    assert kind == "points" and np.array_equal(data, pts)
    assert kw["features"]["obj_id"].tolist() == [1, 2] and kw["features"]["positive"].tolist() == [True, False]

    data, kw, kind = core.load_snapshot(entries["curves/liver"])
    assert kind == "shapes" and kw["shape_type"] == ["polygon", "path"] and kw["ndim"] == 3
    assert all(np.array_equal(a, b) for a, b in zip(data, shapes)) and len(data) == 2
    assert kw["features"]["class_id"].tolist() == [1, 3]
    assert kw["edge_color"].tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]


def test_failed_write_keeps_previous_snapshot():
    folder = core.autosave_dir(SOURCE)
    good = _labels(1)
    path = core.save_layer_snapshot(folder, "masks", "labels", good)
    before = json.loads((folder / core.MANIFEST).read_text())["layers"]["masks"]

    class Breaks:  # a lazy stack whose third frame cannot be read (disk gone, array freed, ...)
        shape, dtype, ndim = good.shape, good.dtype, 3

        def __getitem__(self, t):
            if t == 2:
                raise OSError("frame 2 unreadable")
            return np.zeros(good.shape[1:], good.dtype)

    with pytest.raises(OSError):
        core.save_layer_snapshot(folder, "masks", "labels", Breaks(), skip_unchanged=False)
    with pytest.raises(DatasetError):  # bad points: refused before anything is written
        core.save_layer_snapshot(folder, "pts", "points", np.array([[0.5, 1, 2]]))
    assert np.array_equal(core.load_snapshot(core.list_snapshots(folder)[0])[0], good)
    assert json.loads((folder / core.MANIFEST).read_text())["layers"]["masks"] == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files left
    assert path.is_file()


def test_unchanged_labels_are_not_rewritten():
    folder = core.autosave_dir(SOURCE)
    labels = _labels(2)
    path = core.save_layer_snapshot(folder, "masks", "labels", labels)
    stamp = (path.stat().st_mtime_ns, core.list_snapshots(folder)[0]["saved_at"])
    core.save_layer_snapshot(folder, "masks", "labels", labels.copy())
    assert (path.stat().st_mtime_ns, core.list_snapshots(folder)[0]["saved_at"]) == stamp
    labels[3, 0, 0] += 1
    core.save_layer_snapshot(folder, "masks", "labels", labels)
    assert core.list_snapshots(folder)[0]["saved_at"] != stamp[1]
    assert np.array_equal(core.load_snapshot(core.list_snapshots(folder)[0])[0], labels)
    image = labels[0].copy()  # 2D labels: same rule
    path2 = core.save_layer_snapshot(folder, "one image", "labels", image)
    before = path2.stat().st_mtime_ns
    core.save_layer_snapshot(folder, "one image", "labels", image.copy())
    assert path2.stat().st_mtime_ns == before


class _CountingStack:
    """A (T, H, W) stack that counts which frames a save reads."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, t):
        if isinstance(t, (int, np.integer)):  # (writers also peek at a row)
            self.reads.append(int(t))
        return self.data[t]


def test_a_save_after_edits_recompresses_only_the_changed_frames(monkeypatch):
    """A correction on one frame of a long stack: the save reads (with the
    frames the caller names) and compresses only the changed frames, the
    other frames' strips come from the last snapshot; the file and its
    digest are those of a full save."""
    from surgseg_core.io import labels_io

    folder = core.autosave_dir(SOURCE)
    labels = _labels(shape=(12, 24, 20))
    core.save_layer_snapshot(folder, "masks", "labels", labels)
    compressed = []
    real = labels_io.compressed_frame
    monkeypatch.setattr(labels_io, "compressed_frame", lambda f: compressed.append(f.copy()) or real(f))

    labels[4, 3:9, 2:6] = 7  # a stroke on frame 4, frames named by the caller
    stack = _CountingStack(labels)
    path = core.save_layer_snapshot(folder, "masks", "labels", stack, changed_frames=[4], skip_unchanged=False)
    assert stack.reads == [4] and len(compressed) == 1 and np.array_equal(compressed[0], labels[4])
    (entry,) = core.list_snapshots(folder)
    assert np.array_equal(core.load_snapshot(entry)[0], labels)

    labels[9, :2] = 1  # frames unknown (a model wrote, or an undo): every frame read, only frame 9 compressed
    compressed.clear()
    stack = _CountingStack(labels)
    core.save_layer_snapshot(folder, "masks", "labels", stack)
    assert sorted(set(stack.reads)) == list(range(12)) and len(compressed) == 1
    assert np.array_equal(core.load_snapshot(core.list_snapshots(folder)[0])[0], labels)

    # the manifest's digest is a full save's: an unchanged stack is recognised and kept
    before = path.stat().st_mtime_ns
    compressed.clear()
    assert core.save_layer_snapshot(folder, "masks", "labels", labels.copy()) == path
    assert path.stat().st_mtime_ns == before and compressed == []
    full = core.autosave_dir("/elsewhere/clip.mp4")
    core.save_layer_snapshot(full, "masks", "labels", labels)
    assert core.list_snapshots(full)[0]["digest"] == core.list_snapshots(folder)[0]["digest"]


def test_frame_digests_that_do_not_match_the_snapshot_mean_a_full_save(monkeypatch):
    """A save interrupted between the snapshot and its digests (or a lost
    digests file): the next save cannot trust the copies and writes all."""
    from surgseg_core.io import labels_io

    folder = core.autosave_dir(SOURCE)
    labels = _labels(shape=(6, 10, 8))
    path = core.save_layer_snapshot(folder, "masks", "labels", labels)
    digests = path.with_name(path.name + ".digests")
    assert digests.stat().st_size == 6 * 16
    digests.write_bytes(digests.read_bytes()[::-1])  # not the snapshot's any more
    compressed = []
    real = labels_io.compressed_frame
    monkeypatch.setattr(labels_io, "compressed_frame", lambda f: compressed.append(1) or real(f))
    labels[2] = 3
    stack = _CountingStack(labels)
    core.save_layer_snapshot(folder, "masks", "labels", stack, changed_frames=[2], skip_unchanged=False)
    assert sorted(set(stack.reads)) == list(range(6)) and compressed == []  # the ordinary full writer
    assert np.array_equal(core.load_snapshot(core.list_snapshots(folder)[0])[0], labels)


def test_a_big_restored_stack_is_memory_mapped_not_read_into_ram(monkeypatch, tmp_path):
    monkeypatch.setattr(core, "RESTORE_MAX_RAM_MB", 0)  # treat this stack as too big for RAM
    monkeypatch.setenv("SURGSEG_LABEL_STACK_DIR", str(tmp_path / "stacks"))
    folder = core.autosave_dir(SOURCE)
    labels = _labels(shape=(5, 12, 10))
    core.save_layer_snapshot(folder, "masks", "labels", labels)
    data = core.load_snapshot(core.list_snapshots(folder)[0])[0]
    assert isinstance(data, np.memmap) and np.array_equal(data, labels)
    data[0, 0, 0] = 9  # writable: the restored layer is corrected further


def test_bad_inputs_raise_clear_errors(tmp_path):
    folder = core.autosave_dir(SOURCE)
    with pytest.raises(DatasetError, match="unknown layer kind"):
        core.save_layer_snapshot(folder, "x", "image", np.zeros((2, 2)))
    with pytest.raises(DatasetError, match="labels must be"):
        core.save_layer_snapshot(folder, "x", "labels", np.zeros((1, 2, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="shape types"):
        core.save_layer_snapshot(folder, "s", "shapes", [np.zeros((2, 3))], shape_types=["path", "line"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / core.MANIFEST).write_text("{not json")
    with pytest.raises(DatasetError, match="manifest"):
        core.list_snapshots(folder)
    assert core.list_snapshots(tmp_path / "nothing here") == []


# --------------------------------------------------------------------- napari
def _wait_saved(qtbot, layer, n=1, timeout=8000):
    from napari_surgseg._autosave import watcher_of

    w = watcher_of(layer)
    qtbot.waitUntil(lambda: w.saves >= n and not w.busy, timeout=timeout)


def test_painting_autosaves_off_gui_thread_and_coalesces(qtbot, monkeypatch):
    from napari.layers import Labels

    from napari_surgseg import _autosave

    real_save = core.save_layer_snapshot
    threads, running, peak = [], [0], [0]
    gate = threading.Event()
    gate.set()

    def recording_save(*args, **kwargs):
        threads.append(threading.get_ident())
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            gate.wait(10)
            return real_save(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(core, "save_layer_snapshot", recording_save)
    layer = Labels(np.zeros((3, 16, 16), np.uint8), name="masks")
    folder = _autosave.watch_layer(layer, SOURCE, interval_ms=30)
    assert layer.metadata["autosave_path"].startswith(str(folder))

    layer.brush_size = 3
    layer.paint((1, 5, 5), 3)  # a brush stroke, as the user makes it
    _wait_saved(qtbot, layer)
    assert threading.main_thread().ident not in threads  # saved in a worker
    (entry,) = core.list_snapshots(folder)
    assert np.array_equal(core.load_snapshot(entry)[0], layer.data)
    assert layer.metadata["autosave_path"] == entry["path"]

    # edits while a save is stuck: never two saves at once, the last edit lands
    gate.clear()
    layer.data[2, :4, :4] = 7
    layer.events.data(value=layer.data)
    qtbot.waitUntil(lambda: running[0] == 1, timeout=5000)
    for v in (8, 9):
        layer.data[0, 10:, 10:] = v
        layer.events.data(value=layer.data)
        qtbot.wait(60)  # longer than the debounce: each edit fires the timer
    gate.set()
    _wait_saved(qtbot, layer, n=3)
    assert peak[0] == 1
    assert np.array_equal(core.load_snapshot(core.list_snapshots(folder)[0])[0], layer.data)
    _autosave.unwatch_layer(layer)


def test_saves_do_not_wait_for_model_workers_in_qts_thread_pool(qtbot, monkeypatch):
    """Model workers (a click's frame encoding, a propagation) fill Qt's
    global thread pool on a 2-core machine: a save queued behind them never
    ran before napari closed (CI abort). Saves have their own threads."""
    from napari.layers import Labels
    from qtpy.QtCore import QRunnable, QThreadPool

    from napari_surgseg import _autosave

    pool = QThreadPool.globalInstance()
    old_max = pool.maxThreadCount()
    release = threading.Event()

    class Busy(QRunnable):
        def run(self):
            release.wait(20)

    pool.setMaxThreadCount(1)
    try:
        pool.start(Busy())  # the only slot is taken until the save is on disk
        layer = Labels(np.zeros((3, 16, 16), np.uint8), name="masks")
        folder = _autosave.watch_layer(layer, SOURCE, interval_ms=20)
        layer.paint((1, 5, 5), 3)
        _wait_saved(qtbot, layer, timeout=5000)
        (entry,) = core.list_snapshots(folder)
        assert np.array_equal(core.load_snapshot(entry)[0], layer.data) and layer.data[1].any()
        _autosave.unwatch_layer(layer)
    finally:
        release.set()
        pool.waitForDone(5000)
        pool.setMaxThreadCount(old_max)


QUIT_WITH_BUSY_POOL = """
import threading
import numpy as np
import napari
from qtpy.QtCore import QRunnable, QThreadPool, QTimer
from qtpy.QtWidgets import QApplication
from napari_surgseg import _autosave

_autosave.QUIT_WAIT_S = 2.0  # (the user's 15 s would only make this test slow)
release = threading.Event()

class Busy(QRunnable):  # a model worker that holds the pool's only thread past quit
    def run(self):
        release.wait(30)

pool = QThreadPool.globalInstance()
pool.setMaxThreadCount(1)
pool.start(Busy())
viewer = napari.Viewer(show=False)
layer = viewer.add_labels(np.zeros((4, 32, 32), np.uint8), name="masks")
_autosave.watch_layer(layer, "/videos/clip.mp4", interval_ms=60000)

def edit_and_quit():
    layer.paint((2, 10, 10), 4)
    layer.paint((3, 20, 20), 5)
    _autosave.watcher_of(layer)._timer.timeout.emit()  # its autosave timer fires in the quit's event-loop turn
    print("painted", flush=True)
    threading.Timer(4.0, release.set).start()  # the model worker ends after Qt's quit
    viewer.close()
    QApplication.instance().quit()

QTimer.singleShot(300, edit_and_quit)
napari.run()
"""


@pytest.mark.gui
def test_quit_right_after_an_edit_with_a_busy_thread_pool_saves_it(tmp_path):
    """A fresh napari process closed right after a correction while a model
    worker holds Qt's thread pool: the correction is on disk when the
    process ends, which it does cleanly (no traceback, exit code 0)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "quit.py"
    script.write_text(QUIT_WITH_BUSY_POOL)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, core.ENV_DIR: str(tmp_path / "autosave"),
           "PYTHONPATH": os.pathsep.join([src] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "xcb")}
    res = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "painted" in out, out[-3000:]
    for bad in ("Traceback", "has been deleted", "Aborted"):
        assert bad not in out, out[-3000:]
    (entry,) = core.list_snapshots(core.autosave_dir("/videos/clip.mp4"))  # the same folder as the child's
    data = core.load_snapshot(entry)[0]
    assert data[2, 10, 10] == 4 and data[3, 20, 20] == 5 and not data[[0, 1]].any()


def test_scrubbing_through_the_video_does_not_save_but_refresh_and_undo_do(make_napari_viewer, qtbot, monkeypatch):
    """napari re-slices a Labels layer (set_data event) at every step of the
    time slider: each pause while scrubbing used to read and hash the whole
    stack (seconds for a long video). A model writing into the array and
    refreshing, or an undo, still saves."""
    from napari_surgseg import _autosave

    calls = []
    real_save = core.save_layer_snapshot
    monkeypatch.setattr(core, "save_layer_snapshot", lambda *a, **k: calls.append(1) or real_save(*a, **k))
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((6, 16, 16), np.uint8), name="masks")
    folder = _autosave.watch_layer(layer, SOURCE, interval_ms=20)
    w = _autosave.watcher_of(layer)
    for t in (1, 2, 3, 4, 5, 2, 0):
        viewer.dims.set_current_step(0, t)
        qtbot.wait(30)  # longer than the interval: each pause would fire a save
    qtbot.wait(100)
    assert calls == [] and not w.busy

    layer.data[4, 2:5, 2:5] = 3  # a model writes a frame and refreshes the layer
    layer.refresh()
    _wait_saved(qtbot, layer)
    assert len(calls) == 1
    assert core.load_snapshot(core.list_snapshots(folder)[0])[0][4, 3, 3] == 3

    viewer.dims.set_current_step(0, 1)
    layer.paint((1, 8, 8), 5)
    _wait_saved(qtbot, layer, n=2)
    layer.undo()  # napari's undo writes the old values back and refreshes
    _wait_saved(qtbot, layer, n=3)
    saved = core.load_snapshot(core.list_snapshots(folder)[0])[0]
    assert not saved[1].any() and saved[4, 3, 3] == 3
    _autosave.unwatch_layer(layer)


def test_strokes_name_their_frames_and_model_writes_check_every_frame(make_napari_viewer, qtbot, monkeypatch):
    from napari_surgseg import _autosave

    calls = []
    real_save = core.save_layer_snapshot
    monkeypatch.setattr(core, "save_layer_snapshot",
                        lambda *a, **k: calls.append(k.get("changed_frames")) or real_save(*a, **k))
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((8, 16, 16), np.uint8), name="masks")
    folder = _autosave.watch_layer(layer, SOURCE, interval_ms=20)
    layer.paint((2, 5, 5), 3)
    _wait_saved(qtbot, layer)
    assert calls == [None]  # the first save writes the whole stack
    viewer.dims.set_current_step(0, 5)
    layer.paint((5, 8, 8), 4)
    layer.paint((6, 8, 8), 4)
    _wait_saved(qtbot, layer, n=2)
    assert calls[-1] == [5, 6]
    layer.data[7, :3, :3] = 2  # a model writes frame 7 and refreshes the layer: frames unknown
    layer.refresh()
    _wait_saved(qtbot, layer, n=3)
    assert calls[-1] is None
    layer.undo()  # the stroke on frame 6 goes: an undo refreshes, frames unknown
    _wait_saved(qtbot, layer, n=4)
    assert calls[-1] is None
    saved = core.load_snapshot(core.list_snapshots(folder)[0])[0]
    assert np.array_equal(saved, layer.data) and not saved[6].any() and saved[5, 8, 8] == 4
    _autosave.unwatch_layer(layer)


def test_masks_opened_from_a_file_are_autosaved_from_the_first_correction(make_napari_viewer, qtbot, tmp_path,
                                                                          monkeypatch):
    """Saved masks opened to be corrected (File > Open of a label TIFF):
    opening and scrubbing write nothing (the file is on disk), the first
    stroke and later ones are autosaved with the video the masks belong to
    (their provenance), which stays their recorded source video."""
    from surgseg_core.io.export import write_labels_tiff

    from napari_surgseg import _autosave

    monkeypatch.setenv(_autosave.ENV_INTERVAL, "30")
    lab = _labels(shape=(4, 16, 12))
    write_labels_tiff(lab, tmp_path / "masks.tif", provenance={"source_video": SOURCE})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "masks.tif"), plugin="napari-surgseg")
    w = _autosave.watcher_of(layer)
    assert w is not None and w.folder == core.autosave_dir(SOURCE)
    viewer.dims.set_current_step(0, 2)
    layer.refresh()
    qtbot.wait(300)  # ten save intervals
    assert w.saves == 0 and not w.busy and core.list_snapshots(w.folder) == []
    layer.paint((2, 5, 5), 9)
    qtbot.waitUntil(lambda: w.saves >= 1 and not w.busy, timeout=8000)
    (entry,) = core.list_snapshots(w.folder)
    assert np.array_equal(core.load_snapshot(entry)[0], layer.data) and layer.data[2, 5, 5] == 9
    assert layer.metadata["source_video"] == SOURCE
    _autosave.unwatch_layer(layer)


def test_big_labels_stream_from_the_live_array(qtbot, monkeypatch):
    from napari.layers import Labels

    from napari_surgseg import _autosave

    monkeypatch.setattr(_autosave, "COPY_LIMIT_BYTES", 0)  # treat this stack as "too big to copy"
    layer = Labels(np.zeros((3, 20, 20), np.uint8), name="big")
    folder = _autosave.watch_layer(layer, SOURCE, interval_ms=20)
    layer.paint((2, 10, 10), 5)
    _wait_saved(qtbot, layer)
    (entry,) = core.list_snapshots(folder)
    assert np.array_equal(core.load_snapshot(entry)[0], layer.data) and layer.data[2].any()
    _autosave.unwatch_layer(layer)


def test_autosave_failure_warns_once(qtbot, monkeypatch):
    from napari.layers import Points

    from napari_surgseg import _autosave

    warnings = []
    monkeypatch.setattr(_autosave, "show_warning", warnings.append)
    monkeypatch.setattr(core, "save_layer_snapshot", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    layer = Points(np.zeros((0, 3)), name="pts")
    _autosave.watch_layer(layer, SOURCE, interval_ms=20)
    w = _autosave.watcher_of(layer)
    for i in range(3):
        layer.add([i, 1.0, 2.0])
        qtbot.waitUntil(lambda: not w.busy, timeout=5000)
        qtbot.wait(40)
    # (layers of earlier tests' viewers may still autosave into the patched writer: count this layer's warnings)
    mine = [text for text in warnings if "'pts'" in text]
    assert len(mine) == 1 and "disk full" in mine[0]


def test_reopening_a_video_offers_its_autosave_and_new_layers_are_autosaved(make_napari_viewer, qtbot, tmp_path):
    """Opening a video with autosaved layers: one notification (per viewer)
    naming them, with a "Restore" button that adds them; a labels layer the
    user adds with napari's "New labels layer" is autosaved for that video."""
    from napari.utils.notifications import notification_manager

    from _video_factory import write_video
    from napari_surgseg._autosave import watcher_of

    clip = write_video(tmp_path / "clip.mp4", 4, width=32, height=24, fps=10)
    painted = np.zeros((4, 24, 32), np.uint8)
    painted[2, 3:7, 4:9] = 5
    core.save_layer_snapshot(core.autosave_dir(clip), "masks", "labels", painted, source=clip)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        (video,) = viewer.open(str(clip), plugin="napari-surgseg")
        viewer.open(str(clip), plugin="napari-surgseg")  # the same video again: no second offer
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    offers = [n for n in seen if getattr(n, "surgseg_autosave_entries", None)]
    assert len(offers) == 1 and "'masks'" in str(offers[0].message) and "clip.mp4" in str(offers[0].message)
    assert "WARNING" not in str(offers[0].message)  # the same video
    dict(offers[0].actions)["Restore"](offers[0])
    qtbot.waitUntil(lambda: "masks (restored)" in viewer.layers, timeout=20000)
    assert np.array_equal(viewer.layers["masks (restored)"].data, painted)

    viewer.layers.selection.active = video
    viewer._new_labels()  # the layer list's "New labels layer" button
    new = viewer.layers[-1]
    assert watcher_of(new) is not None and new.metadata["source_video"] == str(clip)
    assert watcher_of(new).folder == core.autosave_dir(clip)


def test_restore_offer_warns_when_the_video_changed_since_the_autosave(make_napari_viewer, tmp_path):
    """Same path, other content (a re-export over the old file): the offer
    says so instead of silently putting old labels on new frames."""
    from napari.utils.notifications import notification_manager

    from _video_factory import write_video
    from surgseg_core.provenance import file_sha256

    clip = write_video(tmp_path / "clip.mp4", 4, width=32, height=24, fps=10)
    core.save_layer_snapshot(core.autosave_dir(clip), "masks", "labels", np.zeros((4, 24, 32), np.uint8), source=clip)
    write_video(clip, 4, width=32, height=24, fps=12)  # another encoding at the same path
    file_sha256(clip)  # (hashed once, as opening does in the background)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        viewer.open(str(clip), plugin="napari-surgseg")
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    (offer,) = [n for n in seen if getattr(n, "surgseg_autosave_entries", None)]
    assert "WARNING: 'masks' were saved for a different content of this file" in str(offer.message)


def test_restore_section_brings_layers_back(make_napari_viewer, qtbot):
    from napari.layers import Labels, Points, Shapes

    from napari_surgseg._autosave import watch_layer
    from napari_surgseg.widgets.corrections import CorrectionsWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="video", metadata={"source_path": SOURCE})
    labels = viewer.add_labels(np.zeros((3, 16, 16), np.uint8), name="masks")
    points = viewer.add_points(np.zeros((0, 3)), name="clicks", features={"obj_id": np.zeros(0, int)})
    shapes = viewer.add_shapes(ndim=3, name="curves")
    for layer in (labels, points, shapes):
        watch_layer(layer, SOURCE, interval_ms=30)
    labels.data[1, 2:6, 3:9] = 4
    labels.events.data(value=labels.data)
    points.feature_defaults = {"obj_id": 2}
    points.add([[1, 3.0, 4.0], [2, 5.5, 6.0]])
    shapes.add_paths([np.array([[1, 1.0, 1.0], [1, 8.0, 9.5]])])
    for layer in (labels, points, shapes):
        _wait_saved(qtbot, layer)

    widget = CorrectionsWidget(viewer)
    widget.image_combo.value = viewer.layers["video"]
    section = widget.restore_section
    assert {e["name"] for e in section.refresh()} == {"masks", "clicks", "curves"}
    section.restore()
    # wait for the layers, not the worker's signal: a quick worker can finish
    # before a signal wait is connected (seen on a loaded machine)
    names = ("masks (restored)", "clicks (restored)", "curves (restored)")
    qtbot.waitUntil(lambda: all(n in viewer.layers for n in names), timeout=60_000)
    restored = viewer.layers["masks (restored)"]
    assert isinstance(restored, Labels) and np.array_equal(restored.data, labels.data)
    rp = viewer.layers["clicks (restored)"]
    assert isinstance(rp, Points) and np.array_equal(rp.data, points.data)
    assert rp.features["obj_id"].tolist() == [2, 2]
    rs = viewer.layers["curves (restored)"]
    assert isinstance(rs, Shapes) and rs.shape_type == ["path"]
    assert np.allclose(rs.data[0], shapes.data[0])
    assert "autosave_path" in restored.metadata  # restored work is autosaved again


def test_widget_layers_are_autosaved(make_napari_viewer, qtbot):
    """SAM2 prompt layers and the liver widget's result layers autosave;
    a liver "Use as correction" (data written, then refresh) is saved too."""
    from napari_surgseg._autosave import watcher_of
    from napari_surgseg.widgets.liver import LiverLandmarksWidget
    from napari_surgseg.widgets.sam2_track import Sam2TrackWidget

    viewer = make_napari_viewer()
    video = viewer.add_image(np.zeros((3, 32, 32, 3), np.uint8), rgb=True, name="video",
                             metadata={"source_path": SOURCE})
    sam = Sam2TrackWidget(viewer)
    sam.video_combo.value = video
    prompts = sam.new_prompt_layer()
    prompts.add([1, 5.0, 6.0])

    liver = LiverLandmarksWidget(viewer)
    liver._ensure_layers(video, False, 3, (32, 32))  # what a model run creates
    liver.shapes_layer.feature_defaults = {"class_id": 1, "frame": 1}
    liver.shapes_layer.add_paths([np.array([[1, 4.0, 4.0], [1, 20.0, 26.0]])])
    viewer.dims.set_current_step(0, 1)
    assert liver.use_as_correction() == 1
    assert liver.labels_layer.data[1].any()

    layers = (prompts, liver.labels_layer, liver.shapes_layer)
    assert all(watcher_of(layer) is not None for layer in layers)
    for layer in layers:
        _wait_saved(qtbot, layer, timeout=15000)
    entries = {e["name"]: e for e in core.list_snapshots(core.autosave_dir(SOURCE))}
    assert np.array_equal(core.load_snapshot(entries[prompts.name])[0], prompts.data)
    assert np.array_equal(core.load_snapshot(entries[liver.labels_layer.name])[0], liver.labels_layer.data)
    curves, kw, _ = core.load_snapshot(entries[liver.shapes_layer.name])
    assert np.allclose(curves[0], liver.shapes_layer.data[0]) and kw["features"]["class_id"].tolist() == [1]
