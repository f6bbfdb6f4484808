"""run_in_worker: the progress bar napari's activity dock shows, cancel
messages, and runs tied to the widget that started them."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("napari")

from napari_surgseg import _workers  # noqa: E402
from napari_surgseg._workers import run_in_worker  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def bars():
    """The progress objects napari's activity dock would show, with every
    value it is sent (the dock listens to the same events:
    napari/_qt/dialogs/qt_activity_dialog.py)."""
    from napari.utils import progress

    seen = []

    def watch(prog) -> None:
        bar = {"prog": prog, "values": [], "closed": False}
        seen.append(bar)

        def on_value(event) -> None:
            bar["values"].append(int(event.value))

        prog.events.value.connect(on_value)

    def changed(event) -> None:
        for prog in event.added:
            watch(prog)
        for prog in event.removed:
            for bar in seen:
                if bar["prog"] is prog:
                    bar["closed"] = True

    progress._all_instances.events.changed.connect(changed)
    yield seen
    progress._all_instances.events.changed.disconnect(changed)


def _steps(n: int, gate: threading.Event, stop_at: int = -1):
    """A core-style function: n units of work, each reported; waits at
    ``stop_at`` until cancelled."""

    def fn(*, progress=None, cancel=None):
        progress(0, n, "starting")
        for i in range(1, n + 1):
            gate.wait(5)
            if i == stop_at + 1:
                while not cancel.cancelled:
                    gate.wait(0.01)
            cancel.raise_if_cancelled()
            progress(i, n, f"frame {i - 1}")
        return n

    return fn


def test_one_bar_moves_to_its_total(make_napari_viewer, qtbot, bars):
    make_napari_viewer()  # the activity dock, with its processEvents() inside every update
    gate = threading.Event()
    gate.set()
    worker, _ = run_in_worker(_steps(12, gate), description="Tracking", unit="frames")
    qtbot.waitUntil(lambda: bars and all(b["closed"] for b in bars), timeout=20_000)
    assert len(bars) == 1  # one run, one bar
    values = bars[0]["values"]
    assert values[-1] == 12 and bars[0]["prog"].total == 12
    assert len(set(values)) >= 2 and values == sorted(values)  # moved up with the work, never back


def test_cancel_says_how_many_frames_were_finished(make_napari_viewer, qtbot, bars, monkeypatch):
    make_napari_viewer()
    infos = []
    monkeypatch.setattr(_workers, "show_info", infos.append)
    gate = threading.Event()
    gate.set()
    worker, token = run_in_worker(_steps(10, gate, stop_at=3), description="Tracking", unit="frames")
    qtbot.waitUntil(lambda: bars and bars[0]["values"] and bars[0]["values"][-1] == 3, timeout=20_000)
    token.cancel()
    qtbot.waitUntil(lambda: infos, timeout=20_000)
    assert infos == ["Tracking: cancelled after 3 of 10 frames"]
    qtbot.waitUntil(lambda: bars[0]["closed"], timeout=5_000)
    assert bars[0]["prog"].desc == "Tracking: cancelled after 3 of 10 frames"  # the bar's last label


def test_closing_the_widget_cancels_the_run_and_disconnects_it(qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent
    from qtpy.QtWidgets import QWidget

    owner = QWidget()
    gate = threading.Event()
    gate.set()
    calls = []
    worker, token = run_in_worker(_steps(50, gate, stop_at=2), description="Tracking", owner=owner,
                                  on_done=calls.append)
    worker.finished.connect(lambda: calls.append("finished"))
    worker.errored.connect(calls.append)
    updates = []
    worker.yielded.connect(updates.append)
    qtbot.waitUntil(lambda: len(updates) >= 3, timeout=20_000)  # running, waiting at unit 3 for a cancel
    owner.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    assert token.cancelled  # the run was told to stop...
    qtbot.wait(300)
    assert calls == []  # ...and nothing of it reached the (deleted) widget's callbacks
    assert not any(t.name == "surgseg: Tracking" and t.is_alive() for t in threading.enumerate())
