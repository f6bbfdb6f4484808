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


def _steps(n: int, go: threading.Semaphore):
    """A core-style function: n units of work, each reported; each unit
    waits for the test to release it (or for a cancel)."""

    def fn(*, progress=None, cancel=None):
        progress(0, n, "starting")
        for i in range(1, n + 1):
            while not go.acquire(timeout=0.01):
                cancel.raise_if_cancelled()
            progress(i, n, f"frame {i - 1}")
        return n

    return fn


def test_one_bar_moves_to_its_total(make_napari_viewer, qtbot, bars):
    make_napari_viewer()  # the activity dock, with its processEvents() inside every update
    go = threading.Semaphore(0)
    run_in_worker(_steps(6, go), description="Tracking", progress_unit="frames")
    for i in range(1, 7):  # the bar follows the work, unit by unit
        go.release()
        qtbot.waitUntil(lambda: bool(bars and bars[0]["values"]) and bars[0]["values"][-1] == i, timeout=20_000)
    qtbot.waitUntil(lambda: all(b["closed"] for b in bars), timeout=20_000)
    assert len(bars) == 1  # one run, one bar
    assert bars[0]["values"] == [1, 2, 3, 4, 5, 6] and bars[0]["prog"].total == 6


def test_cancel_says_how_many_frames_were_finished(make_napari_viewer, qtbot, bars, monkeypatch):
    make_napari_viewer()
    infos = []
    monkeypatch.setattr(_workers, "show_info", infos.append)
    go = threading.Semaphore(3)
    worker, token = run_in_worker(_steps(10, go), description="Tracking", progress_unit="frames")
    qtbot.waitUntil(lambda: bool(bars and bars[0]["values"]) and bars[0]["values"][-1] == 3, timeout=20_000)
    token.cancel()
    qtbot.waitUntil(lambda: bool(infos), timeout=20_000)
    assert infos == ["Tracking: cancelled after 3 of 10 frames"]
    qtbot.waitUntil(lambda: bars[0]["closed"], timeout=5_000)
    assert bars[0]["prog"].desc.startswith("Tracking: cancelled after 3 of 10 frames")  # the bar's last label


def test_closing_the_widget_cancels_the_run_and_disconnects_it(qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent, QThreadPool
    from qtpy.QtWidgets import QWidget

    QThreadPool.globalInstance().waitForDone(30_000)  # no worker of an earlier test still queued ahead of ours

    owner = QWidget()
    go = threading.Semaphore(0)  # released after the connections below: a fast run could finish units before them
    calls = []
    worker, token = run_in_worker(_steps(50, go), description="Tracking", owner=owner,
                                  on_done=calls.append)
    worker.finished.connect(lambda: calls.append("finished"))
    worker.errored.connect(calls.append)
    updates = []
    worker.yielded.connect(updates.append)
    go.release(2)
    # running: units 1 and 2 done, waiting in unit 3 (the first update, 0, may come before the connection)
    qtbot.waitUntil(lambda: bool(updates) and updates[-1][0] == 2, timeout=20_000)
    owner.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    assert token.cancelled  # the run was told to stop...
    qtbot.wait(300)
    assert calls == []  # ...and nothing of it reached the (deleted) widget's callbacks
    assert not any(t.name == "surgseg: Tracking" and t.is_alive() for t in threading.enumerate())


def test_long_runs_do_not_queue_other_workers(qtbot):
    """Qt's global pool is sized to the CPU count; runs hold a pool thread
    while they wait on their compute thread, so the plugin gives it room:
    three runs at once all make progress."""
    gates = [threading.Semaphore(0) for _ in range(3)]
    runs = [run_in_worker(_steps(3, go), description=f"run {i}") for i, go in enumerate(gates)]
    seen = [[] for _ in runs]
    for (worker, _), got in zip(runs, seen):
        worker.yielded.connect(got.append)
    for go in gates:  # one unit of work each, reported after the connections above
        go.release()
    qtbot.waitUntil(lambda: all(got for got in seen), timeout=20_000)  # every run is running and reporting
    for worker, token in runs:
        token.cancel()
    from qtpy.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(20_000)
