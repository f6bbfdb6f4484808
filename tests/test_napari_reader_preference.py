"""Which reader napari uses for videos, the way users start it: fresh
processes with their own napari settings file (``NAPARI_CONFIG``), nothing
imported beforehand by the test harness."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _video_factory import write_video

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]

# Runs `napari <clip>` exactly as the console script does; a timer records
# what the user would see (layers, a "Choose reader" dialog, notifications).
NAPARI_CLI = textwrap.dedent(
    """
    import json, sys
    from napari._qt.qt_event_loop import get_qapp
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from napari.utils.notifications import notification_manager

    out, clip = sys.argv[1], sys.argv[2]
    app = get_qapp()
    seen = {"dialogs": [], "messages": []}
    notification_manager.notification_ready.connect(lambda n: seen["messages"].append(str(n.message)))

    def check(tries=[0]):
        import napari
        tries[0] += 1
        modal = QApplication.activeModalWidget()
        if modal is not None:  # napari's "Choose reader" dialog
            seen["dialogs"].append(modal.windowTitle() or type(modal).__name__)
            modal.reject()
        viewer = napari.current_viewer()
        shown = viewer is not None and viewer.window._qt_window.isVisible()  # napari.run() is running
        if shown and (len(viewer.layers) or seen["dialogs"] or tries[0] > 300):
            seen["layers"] = [[type(ly.data).__name__, list(ly.data.shape)] for ly in viewer.layers]
            json.dump(seen, open(out, "w"))
            viewer.close()
            app.quit()
            return
        QTimer.singleShot(200, check)

    QTimer.singleShot(200, check)
    sys.argv = ["napari", clip]
    from napari.__main__ import main
    main()
    """
)

FIRST_USE = textwrap.dedent(
    """
    import json, sys
    import napari
    from napari.utils.notifications import notification_manager

    out, clip = sys.argv[1], sys.argv[2]
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    viewer = napari.Viewer(show=False)
    viewer.window.add_plugin_dock_widget("napari-surgseg", "Load surgical video")  # the user opens our widget
    (layer,) = viewer.open(clip, plugin=None)  # napari's own choice, as File > Open makes it
    from napari.settings import get_settings
    json.dump({"data": type(layer.data).__name__, "messages": messages,
               "prefs": dict(get_settings().plugins.extension2reader)}, open(out, "w"))
    viewer.close()
    """
)


def _run(tmp_path, script: str, clip: Path, config: Path, name: str) -> dict:
    env = dict(os.environ)
    env["NAPARI_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    out = tmp_path / f"{name}.json"
    res = subprocess.run([sys.executable, str(path), str(out), str(clip)], env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0 and out.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def test_first_use_makes_our_lazy_reader_the_video_reader(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 12, width=64, height=48, fps=10)
    config = tmp_path / "napari" / "settings.yaml"

    first = _run(tmp_path, FIRST_USE, clip, config, "first")
    assert first["data"] == "FrameSource"  # lazy, not the whole clip in memory
    assert first["prefs"]["*.mp4"] == first["prefs"]["*.mkv"] == first["prefs"]["*.MOV"] == "napari-surgseg"
    said = [m for m in first["messages"] if "File extension readers" in m]
    assert len(said) == 1 and ".mp4" in said[0]  # and the user is told, with how to change it
    assert "napari-surgseg" in config.read_text()  # saved in the user's napari settings

    # next session: `napari clip.mp4` opens lazily, with no "Choose reader" dialog and no repeated message
    cli = _run(tmp_path, NAPARI_CLI, clip, config, "cli")
    assert cli["dialogs"] == []
    assert cli["layers"] == [["FrameSource", [12, 48, 64, 3]]]
    assert not [m for m in cli["messages"] if "File extension readers" in m]


def test_a_reader_the_user_chose_is_kept(monkeypatch):
    from napari.settings import get_settings

    from napari_surgseg._activate import prefer_lazy_video_reader

    plugins = get_settings().plugins
    monkeypatch.setattr(plugins, "extension2reader", {"*.mp4": "napari", "/data/videos/*": "other-plugin"})
    added = prefer_lazy_video_reader(notify=False)
    assert "*.mp4" not in added and "*.mkv" in added
    assert plugins.extension2reader["*.mp4"] == "napari"  # the user's choice stands
    assert plugins.extension2reader["/data/videos/*"] == "other-plugin"
    assert plugins.extension2reader["*.mkv"] == "napari-surgseg"
    assert prefer_lazy_video_reader(notify=False) == []  # once set, nothing more to do
