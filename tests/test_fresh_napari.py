"""The plugin the way users run it: napari in a fresh process, nothing
imported before it (no triton pre-import, no plugin), sample data opened and
each widget's main action run from the plugin's own contributions, then the
viewer closed; the process must exit 0. The steps live in _napari_session.py
and print START/OK markers, so a crash names the widget it happened in.

Under Xvfb with Mesa's software OpenGL these caught: Liver landmarks -> Run
segfaulting (triton's LLVM loaded after llvmpipe's), and closing the viewer
during or right after a Track aborting the process (callbacks on deleted
widgets, a worker thread outliving Qt).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

pytestmark = [pytest.mark.gui, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
SESSION = HERE / "_napari_session.py"
SRC = HERE.parent / "src"
TIMEOUT_S = 800


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ)  # DISPLAY from pytest-xvfb, SURGSEG_AUTOSAVE_DIR from conftest
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["QT_QPA_PLATFORM"] = "xcb"
    env["NAPARI_CONFIG"] = str(tmp_path / "napari-settings.yaml")  # never the user's settings
    env["SURGSEG_WEIGHTS_DIR"] = str(tmp_path / "weights")
    env.update(extra)
    return env


def run_session(tmp_path: Path, steps, *, via: str = "script", **spec) -> str:
    """Run the steps in a fresh napari process; fail naming the step (widget)
    the process died in, a failed check, or any traceback on its output.
    ``via``: "script" (``python _napari_session.py``, a user's script) or
    "napari" (``python -m napari`` running the session as its startup script)."""
    spec_path = tmp_path / "session.json"
    spec_path.write_text(json.dumps({"steps": list(steps), "tmp": str(tmp_path), **spec}))
    if via == "script":
        cmd = [sys.executable, str(SESSION), str(spec_path)]
        env = _env(tmp_path)
    else:
        settings = tmp_path / "napari-settings.yaml"
        settings.write_text(f"application:\n  startup_script: {SESSION}\n")
        cmd = [sys.executable, "-m", "napari", "--settings-path", str(settings)]
        env = _env(tmp_path, SURGSEG_SESSION_SPEC=str(spec_path))
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    tail = out[-4000:]
    for step in steps:
        if f"STEP {step} START" not in proc.stdout:
            pytest.fail(f"step {step!r} never started (exit code {proc.returncode}):\n{tail}")
        failed = [line for line in proc.stdout.splitlines() if line.startswith(f"STEP {step} FAIL")]
        if failed:
            pytest.fail(f"step {step!r} failed its check: {failed[0]}\n{tail}")
        if f"STEP {step} OK" not in proc.stdout:
            pytest.fail(f"napari died in step {step!r} (exit code {proc.returncode}, "
                        f"{'segmentation fault' if proc.returncode in (-11, 139) else 'abort' if proc.returncode in (-6, 134) else 'see output'}):\n{tail}")
    assert proc.returncode == 0, f"napari exited with {proc.returncode} after all steps:\n{tail}"
    for bad in ("Traceback", "has been deleted", "Segmentation fault", "Aborted"):
        assert bad not in out, f"{bad!r} in napari's output:\n{tail}"
    return out


def test_sample_loader_track_export_corrections_in_a_script(tmp_path):
    """`python my_script.py` with napari.Viewer() + napari.run(): File > Open
    Sample, Load surgical video, Track with SAM2 (random tiny model), Export
    overlay video, Corrections -> dataset, Clicks (RP-SAM2) click + Track
    through video; progress bars move (checked in the session on napari's
    progress events)."""
    run_session(tmp_path, ["sample", "video_loader", "track", "export_overlay", "corrections", "clicks"])


def test_liver_run_and_training_start_stop_from_napari_command(tmp_path):
    """`python -m napari` (the `napari` command): Liver landmarks -> Run with a
    small trained model (this segfaulted: triton after llvmpipe), then Train
    a model -> Start / Stop in its own process."""
    import napari_surgseg  # noqa: F401  (this process trains in-process under Xvfb too: the plugin's guard)
    from _liver_helpers import SMALL_MODEL, trained_liver_model

    result, _, _ = trained_liver_model()
    small = {**SMALL_MODEL, "line_thickness": 3, "encoder_weights": None}
    run_session(tmp_path, ["liver", "train"], via="napari",
                liver_checkpoint=str(result.best_checkpoint), train_config=small)


def test_tool_landmarks_run_in_a_script(tmp_path):
    """Tool landmarks -> Run on frames 0..2 of the sample clip (random tiny
    model with its random SAM2 prior): heatmaps, points, one progress bar."""
    run_session(tmp_path, ["tools"])


def test_close_viewer_during_track_exits_cleanly(tmp_path):
    run_session(tmp_path, ["sample", "close_mid_track"])


def test_close_viewer_right_after_track_exits_cleanly(tmp_path):
    """The run ends, then the viewer and its widgets are deleted before the
    run's queued signals arrive: none of them may reach a deleted widget."""
    run_session(tmp_path, ["sample", "close_after_track"])


def test_demo_napari_session_docks_every_widget_ready_to_run(tmp_path):
    """``surgseg demo --napari`` as a user starts it (the CLI spawns a fresh
    napari process): the sample, every method widget docked from the plugin,
    the bundled demo weights chosen and prompts placed from the ground truth
    (``--check`` closes once the first click has segmented)."""
    import re

    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "surgseg_core", "demo", "--napari", "--check"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for bad in ("Traceback", "has been deleted", "Segmentation fault", "Aborted"):
        assert bad not in out, f"{bad!r} in napari's output:\n{out[-4000:]}"
    line = next(l for l in proc.stdout.splitlines() if l.startswith("demo session ready: "))
    done = dict(re.findall(r"(\w+)=([^,]+)", line[len("demo session ready: "):]))
    assert done["track_model"] == "True" and int(done["track_boxes"]) >= 1
    assert int(done["anatomy_boxes"]) >= 10  # several classes on frames 0, 10 and 20
    assert int(done["clicks"]) >= 1
    assert done["clicks_weights"] == "surgseg-demo-rpsam2" and done["tools_weights"] == "surgseg-demo-tools"
    for title in ("Track with SAM2", "Anatomy (F2PASeg)", "Clicks (RP-SAM2)", "Tool landmarks", "Liver landmarks"):
        assert title in line


def test_anatomy_propagate_in_a_script(tmp_path):
    """Anatomy (F2PASeg) from the Plugins menu in a fresh process: boxes per
    class -> Propagate (random tiny F2PASeg) -> class ids on every frame, one
    progress bar that moves."""
    run_session(tmp_path, ["anatomy"])


CLOSE_DURING_SAVE = """
import sys, time
import numpy as np
import napari
from qtpy.QtCore import QTimer
from napari_surgseg import _autosave
from surgseg_core.io import autosave as core

real = core.save_layer_snapshot
def slow_save(*args, **kwargs):  # a big stack on a slow disk
    print("SAVE START", flush=True)
    time.sleep(2.0)
    out = real(*args, **kwargs)
    print("SAVE DONE", flush=True)
    return out
core.save_layer_snapshot = slow_save

viewer = napari.Viewer()
layer = viewer.add_labels(np.zeros((3, 64, 64), np.uint8), name="corrections")
folder = _autosave.watch_layer(layer, interval_ms=10)
layer.data[1, 10:20, 10:20] = 2
_autosave.request_save(layer)
# the user closes napari while the save runs...

def correct_and_close():  # ...or right after a last correction, before its save started
    layer.data[2, 30:40, 30:40] = 3
    _autosave.request_save(layer)
    viewer.close()

if sys.argv[1:] == ["last-edit"]:
    QTimer.singleShot(3000, correct_and_close)
else:
    QTimer.singleShot(600, viewer.close)
napari.run()
print("SESSION END", folder, flush=True)
"""


@pytest.mark.parametrize("when", ["during-save", "last-edit"])
def test_closing_napari_keeps_the_last_corrections(tmp_path, when):
    """The user closes napari while a corrected layer is being autosaved (a
    slow disk), or right after a last correction whose save has not started:
    the process exits normally (a save worker outliving Qt aborts it) and
    the snapshot on disk holds every correction."""
    from surgseg_core.io import autosave as core

    script = tmp_path / "close_during_save.py"
    script.write_text(CLOSE_DURING_SAVE)
    env = _env(tmp_path, SURGSEG_AUTOSAVE_DIR=str(tmp_path / "autosave"))
    args = ["last-edit"] if when == "last-edit" else []
    proc = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"napari exited with {proc.returncode}:\n{out[-3000:]}"
    assert "SAVE DONE" in proc.stdout and proc.stdout.index("SAVE DONE") < proc.stdout.index("SESSION END"), out[-3000:]
    folder = Path(proc.stdout.split("SESSION END", 1)[1].split()[0])
    entries = [e for e in core.list_snapshots(folder) if e.get("name") == "corrections"]
    assert entries, f"no snapshot written in {folder}:\n{out[-3000:]}"
    data = np.asarray(core.load_snapshot(entries[0])[0])
    assert (data[1] == 2).sum() == 100
    assert (data[2] == 3).sum() == (100 if when == "last-edit" else 0)
