"""napari killed (SIGKILL) during a correction session (issue 15): the
autosave brings the work back in the next session.

Session 1 is a real napari process: the user opens a video with the
plugin's reader, makes a labels layer with napari's own "New labels layer"
button, paints strokes on two frames with the brush and waits a moment;
one more stroke comes right before the kill. The test SIGKILLs the process
when it says it has painted (no sleep decides where the kill lands).
Session 2 is `napari clip.mp4` as the user starts it again: opening the
video shows a notification naming the autosaved layer with a "Restore"
button; pressing it adds "<name> (restored)" holding the strokes, lying on
the video, and autosaved again. At most the strokes of the last autosave
interval may be lost: the restored layer is the state after the second
stroke or after the third, never less.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _kill_helpers import kill, start, wait_for
from _video_factory import write_video

pytest.importorskip("napari")

pytestmark = [pytest.mark.gui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
T, H, W = 8, 64, 96

# Session 1: paint, wait for the autosave, paint once more, signal, keep running.
PAINT = """
import json, sys
from pathlib import Path
import numpy as np
import napari
from qtpy.QtCore import QTimer

clip, tmp = sys.argv[1], Path(sys.argv[2])
viewer = napari.Viewer()
(video,) = viewer.open(clip, plugin="napari-surgseg")  # as File > Open with the plugin's reader
viewer.layers.selection.active = video
viewer._new_labels()  # the layer list's "New labels layer" button
labels = viewer.layers[-1]
labels.brush_size = 9
states = []

def stroke(t, y, x, label):
    viewer.dims.set_current_step(0, t)
    labels.selected_label = label
    labels.paint((t, y, x), label)  # one brush dab, as a mouse press paints it
    states.append(np.array(labels.data, copy=True))

def saved_after(n):
    from napari_surgseg._autosave import watcher_of
    w = watcher_of(labels)
    return w is not None and w.saves >= n and not w.busy

def steps():
    stroke(2, 20, 30, 1)
    yield lambda: saved_after(1)
    stroke(5, 40, 60, 2)
    yield lambda: saved_after(2)
    stroke(6, 30, 50, 3)  # the kill comes before (or while) this one is saved
    for i, s in enumerate(states):
        np.save(tmp / f"state{i}.npy", s)
    (tmp / "painted.tmp").write_text(json.dumps({"name": labels.name, "scale": list(map(float, labels.scale)),
                                                 "autosave_path": labels.metadata.get("autosave_path")}))
    (tmp / "painted.tmp").rename(tmp / "painted")
    yield lambda: False  # wait for the kill

gen, cond = steps(), [lambda: True]
def tick():
    if cond[0]():
        cond[0] = next(gen)
    QTimer.singleShot(50, tick)
QTimer.singleShot(200, tick)
napari.run()
"""

# Session 2: `napari clip.mp4`; press "Restore" on the autosave notification.
REOPEN = """
import json, sys
from pathlib import Path
import numpy as np
from napari._qt.qt_event_loop import get_qapp
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
from napari.utils.notifications import notification_manager

clip, tmp = sys.argv[1], Path(sys.argv[2])
app = get_qapp()
seen = {"dialogs": [], "messages": [], "pressed": False}
offers = []
def on_notification(n):
    seen["messages"].append(str(n.message))
    if getattr(n, "surgseg_autosave_entries", None):
        offers.append(n)
notification_manager.notification_ready.connect(on_notification)

def check(tries=[0]):
    import napari
    tries[0] += 1
    modal = QApplication.activeModalWidget()
    if modal is not None:
        seen["dialogs"].append(modal.windowTitle() or type(modal).__name__)
        modal.reject()
    viewer = napari.current_viewer()
    shown = viewer is not None and viewer.window._qt_window.isVisible()
    if shown and offers and not seen["pressed"]:
        seen["offer"] = {"message": str(offers[0].message), "buttons": [text for text, _ in offers[0].actions]}
        dict(offers[0].actions)["Restore"](offers[0])  # the user presses the notification's button
        seen["pressed"] = True
    restored = [ly for ly in viewer.layers if ly.name.endswith(" (restored)")] if viewer is not None else []
    if restored or seen["dialogs"] or tries[0] > 600:
        seen["layers"] = [ly.name for ly in viewer.layers] if viewer is not None else []
        if restored:
            ly = restored[0]
            np.save(tmp / "restored.npy", np.asarray(ly.data))
            seen["restored"] = {"name": ly.name, "scale": list(map(float, ly.scale)),
                                "autosave_path": ly.metadata.get("autosave_path")}
        json.dump(seen, open(tmp / "reopen.json", "w"))
        viewer.close()
        app.quit()
        return
    QTimer.singleShot(100, check)

QTimer.singleShot(200, check)
sys.argv = ["napari", clip]
from napari.__main__ import main
main()
"""


def test_napari_killed_mid_correction_restores_the_painting_on_reopening(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", T, width=W, height=H, fps=10)
    env = {
        "SURGSEG_AUTOSAVE_DIR": str(tmp_path / "autosave"),
        "SURGSEG_AUTOSAVE_INTERVAL_MS": "300",  # the user default is 2000 ms
        "NAPARI_CONFIG": str(tmp_path / "napari" / "settings.yaml"),  # both sessions share the user's settings
        "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "xcb"),
    }
    proc = start(PAINT, clip, tmp_path, cwd=tmp_path, **env)
    painted = json.loads(wait_for(proc, tmp_path / "painted", timeout=300))
    kill(proc)
    states = [np.load(tmp_path / f"state{i}.npy") for i in range(3)]
    assert [int((s > 0).sum()) > 0 for s in states] == [True] * 3
    assert not np.array_equal(states[1], states[2])  # the last stroke changed the layer
    assert painted["name"] == "clip - Labels" and painted["autosave_path"]

    reopen = tmp_path / "reopen.py"
    reopen.write_text(textwrap.dedent(REOPEN))
    child_env = {**os.environ, **env}
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    res = subprocess.run([sys.executable, str(reopen), str(clip), str(tmp_path)], env=child_env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = json.loads((tmp_path / "reopen.json").read_text())
    assert seen["dialogs"] == []
    offer = seen["offer"]
    assert offer["buttons"] == ["Restore"]
    assert "clip.mp4" in offer["message"] and "'clip - Labels'" in offer["message"]
    assert seen["restored"]["name"] == "clip - Labels (restored)", seen["layers"]

    restored = np.load(tmp_path / "restored.npy")
    assert restored.shape == (T, H, W)
    # every stroke saved before the kill is back; the last one may be lost
    assert np.array_equal(restored, states[1]) or np.array_equal(restored, states[2])
    assert set(np.unique(restored[2])) == {0, 1} and set(np.unique(restored[5])) == {0, 2}
    assert seen["restored"]["scale"] == painted["scale"]  # on the video, as it was painted
    assert seen["restored"]["autosave_path"]  # and autosaved again
