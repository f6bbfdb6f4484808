"""Progress reporting and cooperative cancellation without any GUI import.

Compute code takes ``progress: ProgressCallback | None`` and ``cancel:
CancelToken | None``; the napari widgets adapt these to progress bars and
Stop buttons, the CLI to a text bar.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, Protocol

from .errors import Cancelled


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: Optional[int], message: str = "") -> None: ...


class CancelToken:
    """Thread-safe flag checked between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def report(progress: Optional[ProgressCallback], done: int, total: Optional[int], message: str = "") -> None:
    """Call ``progress`` if given (keeps call sites one line)."""
    if progress is not None:
        progress(done, total, message)


def check_cancel(cancel: Optional[CancelToken]) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


class TextProgress:
    """A minimal terminal progress bar for the CLI (stderr, throttled)."""

    def __init__(self, label: str = "", stream=None, min_interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0

    def __call__(self, done: int, total: Optional[int], message: str = "") -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        if total:
            width = 30
            filled = int(width * min(done, total) / total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {done}/{total} {message}"
        else:
            text = f"\r{self.label} {done} {message}"
        self.stream.write(text[:120].ljust(60))
        if final:
            self.stream.write("\n")
        TextProgress._open = None if final else self.stream
        self.stream.flush()

    _open = None  # the stream whose bar line is not finished yet

    @classmethod
    def end_line(cls) -> None:
        """Clear an unfinished bar line, so that an error printed next takes
        its place (instead of being appended to the bar)."""
        stream, cls._open = cls._open, None
        if stream is not None:
            stream.write("\r" + " " * 120 + "\r")
            stream.flush()


Callback = Callable[[int, Optional[int], str], None]
