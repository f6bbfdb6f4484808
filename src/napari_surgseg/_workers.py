"""Run core functions off napari's GUI thread with progress and cancel.

Core code reports through ``progress(done, total, message)`` and checks a
``CancelToken``; this module turns that into a napari ``thread_worker`` whose
``yielded`` signal drives a progress bar, so no widget ever blocks the GUI.
"""
from __future__ import annotations

import queue
from typing import Any, Callable, Optional

from napari.qt.threading import thread_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info

from surgseg_core.errors import Cancelled, SurgsegError
from surgseg_core.progress import CancelToken


def run_in_worker(
    fn: Callable[..., Any],
    *args: Any,
    on_done: Optional[Callable[[Any], None]] = None,
    description: str = "working",
    **kwargs: Any,
):
    """Start ``fn(*args, progress=..., cancel=..., **kwargs)`` in a thread.

    Returns ``(worker, cancel_token)``. Progress goes to a napari progress bar;
    ``SurgsegError`` arrives as a napari error notification with its message;
    cancellation is a short info notification.
    """
    token = CancelToken()
    updates: "queue.Queue[tuple[int, Optional[int], str]]" = queue.Queue()

    def _progress(done: int, total: Optional[int], message: str = "") -> None:
        updates.put((done, total, message))

    # ignore_errors: _on_error below turns errors into notifications; without
    # it napari also re-raises them in the Qt event loop (a traceback dialog).
    @thread_worker(ignore_errors=True)
    def _work():
        import threading

        result: dict = {}

        def target():
            try:
                result["value"] = fn(*args, progress=_progress, cancel=token, **kwargs)
            except BaseException as exc:  # forwarded to the GUI thread below
                result["error"] = exc

        t = threading.Thread(target=target, daemon=True)
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
    pbar = {"bar": None}

    def _on_yield(update):
        done, total, message = update
        bar = pbar["bar"]
        if bar is None:
            bar = pbar["bar"] = napari_progress(total=total or 0, desc=description)
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_description(f"{description}: {message}")
        bar.refresh()

    def _close_bar(*_):
        if pbar["bar"] is not None:
            pbar["bar"].close()
            pbar["bar"] = None

    def _on_error(exc):
        _close_bar()
        if isinstance(exc, Cancelled):
            show_info(f"{description}: cancelled")
        elif isinstance(exc, SurgsegError):
            show_error(f"{description}: {exc}")
        else:
            show_error(f"{description} failed: {type(exc).__name__}: {exc}")

    def _on_returned(value):
        _close_bar()
        if on_done is not None:
            on_done(value)

    worker.yielded.connect(_on_yield)
    worker.errored.connect(_on_error)
    worker.returned.connect(_on_returned)
    worker.start()
    return worker, token
