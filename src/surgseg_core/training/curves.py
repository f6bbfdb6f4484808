"""Loss/metric curves of a run as a PNG (matplotlib Agg, no GUI).

The training worker process draws them, not the napari GUI: a matplotlib
redraw costs 30-150 ms of Python time on a busy 2-core machine, and done in
napari's process (even in a thread, through the GIL) it stalls the viewer.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..atomic import atomic_path


def render_curves(path: Path, steps: List[float], losses: List[float], epoch_steps: List[float],
                  metrics: List[float], metric_name: str = "metric", size=(4.0, 2.6), dpi: int = 100) -> Path:
    """Training loss per optimizer step (left axis) and the monitored
    metric per epoch (right axis), written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.16, right=0.84, bottom=0.18, top=0.95)
    ax = fig.add_subplot(111)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    if steps:
        ax.plot(steps, losses, color="tab:blue", lw=1)
    ax2 = ax.twinx()
    ax2.set_ylabel(metric_name, color="tab:orange")
    if epoch_steps:
        ax2.plot(epoch_steps, metrics, "o-", color="tab:orange", ms=3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


class CurveRecorder:
    """Collects trainer events and redraws ``path`` at most every
    ``min_interval`` seconds (and after every epoch); calls ``on_plot(path)``."""

    def __init__(self, path: Path, on_plot: Optional[Callable[[Path], None]] = None,
                 min_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.on_plot = on_plot
        self.min_interval = min_interval
        self.steps: List[float] = []
        self.losses: List[float] = []
        self.epoch_steps: List[float] = []
        self.metrics: List[float] = []
        self.metric_name = "metric"
        self._last = 0.0
        self._dirty = False

    def __call__(self, event: Dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.metric_name = event.get("monitor") or self.metric_name
        elif kind == "step" and isinstance(event.get("loss"), (int, float)):
            self.steps.append(event["step"])
            self.losses.append(float(event["loss"]))
            self._dirty = True
        elif kind == "epoch":
            self.metric_name = event.get("monitor") or self.metric_name
            value = event.get(self.metric_name)
            if isinstance(value, (int, float)):
                self.epoch_steps.append(event["step"])
                self.metrics.append(float(value))
            self._dirty = True
        else:
            return
        now = time.monotonic()
        if self._dirty and (kind == "epoch" or now - self._last >= self.min_interval):
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        self._last = time.monotonic()
        self._dirty = False
        render_curves(self.path, self.steps, self.losses, self.epoch_steps, self.metrics, self.metric_name)
        if self.on_plot is not None:
            self.on_plot(self.path)
