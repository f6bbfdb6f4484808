"""Shared test helpers for runs of the streaming SAM2 engine."""
from __future__ import annotations

import time


def slow_engine_steps(monkeypatch, delay: float = 0.4, *, after: bool = False) -> list:
    """Make each frame step of ``StreamingSAM2`` take ``delay`` seconds longer
    (long enough to cancel mid-video); returns the list the stepped frame
    indices are appended to (before the step, or once it is done with ``after``)."""
    from surgseg_core.sam2_engine import StreamingSAM2

    emitted: list = []
    real_step = StreamingSAM2._step

    def slow_step(self, frame_idx, reverse):
        time.sleep(delay)
        if not after:
            emitted.append(frame_idx)
        result = real_step(self, frame_idx, reverse)
        if after:
            emitted.append(frame_idx)
        return result

    monkeypatch.setattr(StreamingSAM2, "_step", slow_step)
    return emitted


def cancel_mid_run(qtbot, widget, start, emitted: list, frames: int = 1, timeout: int = 120000) -> None:
    """``start()`` a run of a propagation widget, cancel it once ``frames``
    frames were stepped (see :func:`slow_engine_steps`) and wait for its end."""
    start()
    qtbot.waitUntil(lambda: len(emitted) >= frames, timeout=timeout)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.track_button.enabled, timeout=timeout)
