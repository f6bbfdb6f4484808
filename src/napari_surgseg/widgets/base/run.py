"""Runs of a method widget: one worker at a time, with progress and cancel,
and the model kept between runs.

:class:`RunControl` starts a core function in a worker
(``_workers.run_in_worker`` with the widget as owner: closing the widget
cancels the run and waits for it), disables the widget's run buttons and
enables its Cancel button while it runs, refreshes result layers as progress
arrives (the worker writes into their arrays; napari reads them only on
``refresh()``, which happens here on the GUI thread), and calls back on
success, failure (cancel included) and at the end.

:class:`ModelCache` keeps the last model built (previews and runs then skip
rebuilding and reloading the weights); it is used from the worker thread.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Iterable, Optional

from ..._workers import run_in_worker


class ModelCache:
    """One model in memory at a time, keyed by what built it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Optional[Hashable] = None
        self._model: Any = None

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The model for ``key``; ``build()`` makes it when the cache holds another (or none)."""
        with self._lock:
            if self._model is not None and self._key == key:
                return self._model
        model = build()
        with self._lock:
            self._key, self._model = key, model  # the previous model is dropped
        return model

    def clear(self) -> None:
        with self._lock:
            self._key, self._model = None, None

    def __contains__(self, key: Hashable) -> bool:
        return self._model is not None and self._key == key


class RunControl:
    """Start / cancel of a widget's runs.

    ``owner``: the widget (its native Qt widget ends the run when closed);
    ``buttons``: disabled while a run goes on; ``cancel_button``: enabled
    only then (clicking it cancels). ``after`` is called when any run ended,
    however it ended (buttons are already re-enabled then)."""

    def __init__(self, owner: Any, buttons: Iterable[Any] = (), cancel_button: Any = None,
                 after: Optional[Callable[[], None]] = None) -> None:
        self.owner = owner
        self.buttons = list(buttons)
        self.cancel_button = cancel_button
        self.after = after
        self.worker = None
        self.token = None
        self.hold = False  # True: the buttons stay disabled after the run (work that continues on the GUI thread)
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.changed.connect(lambda *_: self.cancel())

    @property
    def busy(self) -> bool:
        return self.token is not None

    def set_busy(self, busy: bool) -> None:
        for button in self.buttons:
            button.enabled = not busy
        if self.cancel_button is not None:
            self.cancel_button.enabled = busy and self.token is not None

    def start(self, job: Callable[..., Any], *args: Any, description: str, on_done: Callable[[Any], None],
              on_error: Optional[Callable[[BaseException], None]] = None, refresh: Iterable[Any] = (),
              unit: str = "frames", **kwargs: Any):
        """Run ``job(*args, progress=..., cancel=..., **kwargs)`` in a worker;
        ``refresh``: layers redrawn at each progress update. Returns the worker."""
        layers = list(refresh)
        self.worker, self.token = run_in_worker(job, *args, on_done=on_done, description=description,
                                                owner=self.owner, progress_unit=unit, **kwargs)
        self.set_busy(True)
        if layers:
            self.worker.yielded.connect(lambda _update: [layer.refresh() for layer in layers])
        if on_error is not None:
            self.worker.errored.connect(on_error)
        self.worker.finished.connect(self._finished)
        return self.worker

    def cancel(self) -> bool:
        """Ask the run to stop (it ends after the frame or batch in progress)."""
        if self.token is None:
            return False
        self.token.cancel()
        return True

    def _finished(self) -> None:
        self.token = None
        if not self.hold:
            self.set_busy(False)
        elif self.cancel_button is not None:
            self.cancel_button.enabled = False
        if self.after is not None:
            self.after()
