"""Run core functions off napari's GUI thread with progress and cancel.

Core code reports through ``progress(done, total, message)`` and checks a
``CancelToken``; this module turns that into a napari ``thread_worker`` whose
``yielded`` signal drives one progress bar (:class:`RunProgress`), so no
widget ever blocks the GUI. A worker started for a widget (``owner``) is
tied to it: when the widget or the viewer closes, the run is cancelled, its
signals are disconnected and its threads are waited for, so no callback
ever touches a deleted Qt widget and no thread outlives the application.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

from napari.qt.threading import thread_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info

from surgseg_core.errors import Cancelled, SurgsegError
from surgseg_core.progress import CancelToken

from ._triton_guard import install as _install_triton_guard

#: how long closing a widget waits for its run to notice the cancel (a model
#: load or one frame); the application must not exit under a running thread
STOP_WAIT_S = 15.0

# public signals of a napari GeneratorWorker (the private ``_finished`` stays:
# the worker uses it to drop itself from its class's set of live workers)
_SIGNALS = ("started", "yielded", "returned", "errored", "warned", "finished", "aborted", "paused", "resumed")


class RunProgress:
    """One napari progress bar for one run, fed with ``(done, total, message)``.

    napari's activity dock redraws a bar on the progress object's events,
    which ``update()``, ``total =`` and ``set_description()`` emit; assigning
    ``n`` emits nothing (bars stood at 0 % while the work went on). The dock
    also calls ``processEvents()`` inside those events, so the next updates
    (and the run's end) can arrive while one is applied: they are folded into
    the one in progress, which keeps a run at one bar.
    """

    def __init__(self, description: str, unit: str = "") -> None:
        self.description = description
        self.unit = unit
        self.bar: Optional[napari_progress] = None
        self.done = 0
        self.total: Optional[int] = None
        self._pending: Optional[tuple] = None
        self._busy = False
        self._close: Optional[str] = None  # close requested (with this last message)

    def update(self, done: int, total: Optional[int], message: str = "") -> None:
        if self._close is not None:
            return
        self.done, self.total = int(done), (None if total is None else int(total))
        self._pending = (self.done, self.total, message)
        self._drain()

    def close(self, message: str = "") -> None:
        if self._close is None:
            self._close = message
        self._drain()

    def count(self) -> str:
        """'16 of 251 frames' (what is finished so far)."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.done} of {self.total}{unit}" if self.total else f"{self.done}{unit}"

    def _drain(self) -> None:
        if self._busy:  # re-entered from the dock's processEvents: the outer call applies it
            return
        self._busy = True
        try:
            while self._pending is not None or (self._close is not None and self.bar is not None):
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    self._apply(*pending)
                    continue
                bar, self.bar = self.bar, None
                if self._close:
                    bar.set_description(f"{self.description}: {self._close}")
                bar.close()
        finally:
            self._busy = False

    def _apply(self, done: int, total: Optional[int], message: str) -> None:
        if self.bar is None:
            self.bar = napari_progress(total=total or 0, desc=self.description)
        bar = self.bar
        if total is not None and bar.total != total:
            bar.total = total
        if done != bar.n:
            bar.update(done - bar.n)
        if message:
            bar.set_description(f"{self.description}: {message}")


POOL_THREADS = 8


def _ensure_pool_room() -> None:
    """napari's workers run in Qt's global thread pool, sized to the CPU
    count (2 on many laptops). A run here holds a pool thread while its
    compute thread works, so two long runs (a Track, a liver run) would queue
    every other worker (autosave, ranking, previews) behind them: give the
    pool room for waiting threads (they sleep; the compute is elsewhere)."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.maxThreadCount() < POOL_THREADS:
        pool.setMaxThreadCount(POOL_THREADS)


def run_in_worker(
    fn: Callable[..., Any],
    *args: Any,
    on_done: Optional[Callable[[Any], None]] = None,
    description: str = "working",
    owner: Any = None,
    progress_unit: str = "",
    **kwargs: Any,
):
    """Start ``fn(*args, progress=..., cancel=..., **kwargs)`` in a thread.

    Returns ``(worker, cancel_token)``. Progress goes to a napari progress bar
    (``progress_unit`` names what ``done``/``total`` count, for the cancel
    message; not ``unit``, which the video loader passes on to its function);
    ``SurgsegError`` arrives as a napari error notification with its message;
    cancellation is a short info notification saying how far the run got.
    ``owner`` (the widget that starts the run, magicgui or Qt) ties the run to
    it: see :func:`stop_with`.
    """
    # inference may reach triton (torchvision.ops -> torch._dynamo): make sure
    # it finds it absent when OpenGL's LLVM is loaded (see _triton_guard)
    _install_triton_guard()
    _ensure_pool_room()
    token = CancelToken()
    updates: "queue.Queue[tuple[int, Optional[int], str]]" = queue.Queue()
    compute: dict = {}

    def _progress(done: int, total: Optional[int], message: str = "") -> None:
        updates.put((done, total, message))

    # ignore_errors: _on_error below turns errors into notifications; without
    # it napari also re-raises them in the Qt event loop (a traceback dialog).
    @thread_worker(ignore_errors=True)
    def _work():
        result: dict = {}

        def target():
            try:
                result["value"] = fn(*args, progress=_progress, cancel=token, **kwargs)
            except BaseException as exc:  # forwarded to the GUI thread below
                result["error"] = exc

        # fn runs in its own thread so that this generator can yield progress
        # (and notice a quit) while fn is busy in one long call
        t = compute["thread"] = threading.Thread(target=target, daemon=True, name=f"surgseg: {description}")
        t.start()
        while t.is_alive() or not updates.empty():
            try:
                yield updates.get(timeout=0.05)
            except queue.Empty:
                pass
        if "error" in result:
            raise result["error"]
        return result.get("value")

    worker = _work()
    bar = RunProgress(description, progress_unit)

    def _on_error(exc):
        if isinstance(exc, Cancelled):
            bar.close(f"cancelled after {bar.count()}")
            show_info(f"{description}: cancelled after {bar.count()}")
        else:
            bar.close()
            if isinstance(exc, SurgsegError):
                show_error(f"{description}: {exc}")
            else:
                show_error(f"{description} failed: {type(exc).__name__}: {exc}")

    def _on_returned(value):
        bar.close()
        if on_done is not None:
            on_done(value)

    worker.yielded.connect(lambda update: bar.update(*update))
    worker.errored.connect(_on_error)
    worker.returned.connect(_on_returned)
    worker.finished.connect(bar.close)  # also after a quit, which emits neither returned nor errored
    if owner is not None:
        stop_with(owner, worker, token, compute, bar)
    worker.start()
    return worker, token


def stop_with(owner: Any, worker, token: CancelToken, compute: dict, bar: Optional[RunProgress] = None) -> None:
    """Tie a running worker to ``owner``'s Qt widget: when that widget is
    destroyed (closed, its dock removed, the viewer window closed) or the
    application quits, the run is cancelled, every signal of the worker is
    disconnected (widget callbacks must not run on deleted widgets), and the
    threads are given ``STOP_WAIT_S`` to end so none outlives the Qt objects
    it reports to."""
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    native = getattr(owner, "native", owner)
    app = QApplication.instance()
    state = {"live": True}

    def stop(*_: Any) -> None:
        if not state["live"]:
            return
        state["live"] = False
        token.cancel()
        worker.quit()
        for name in _SIGNALS:
            try:
                getattr(worker, name).disconnect()
            except (TypeError, RuntimeError, AttributeError):  # nothing connected / already deleted
                pass
        if bar is not None:
            bar.close()
        thread = compute.get("thread")
        if thread is not None:
            thread.join(STOP_WAIT_S)
        # the generator notices the quit within one 50 ms poll; wait for the
        # runnable to emit its last (now unconnected) signals before Qt goes
        QThreadPool.globalInstance().waitForDone(int(STOP_WAIT_S * 1000))

    def forget(*_: Any) -> None:
        # run over normally: nothing left to stop
        state["live"] = False
        for signal, slot in ((getattr(native, "destroyed", None), stop),
                             (getattr(app, "aboutToQuit", None), stop)):
            if signal is not None:
                try:
                    signal.disconnect(slot)
                except (TypeError, RuntimeError):
                    pass

    if getattr(native, "destroyed", None) is not None:
        native.destroyed.connect(stop)
    if app is not None:
        app.aboutToQuit.connect(stop)
    worker.finished.connect(forget)
