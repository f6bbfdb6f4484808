"""Training in a child process: ``python -m surgseg_core.training.worker JOB.json``.

The napari widget (through :class:`~.process.TrainingProcess`) runs training
here so the GUI never blocks and all GPU memory is freed when the process
ends. Protocol:

* stdout: one JSON object per line: the trainer's events (``start``,
  ``step``, ``epoch``, ``checkpoint``, ``done``) plus ``progress``,
  ``plot`` (``path`` of the redrawn RUN_DIR/curves.png), ``registered``,
  ``warning``, ``error`` (``message`` is for the user) and ``finished``;
* stdin: a line ``stop`` asks for a clean stop (finish the step, save
  ``last.pt``, exit 0); end of input (the parent died) does the same.

JOB.json: ``{"method", "config", "run_dir", "resume", "sys_path": [...],
"register": {"name", "base"} or null, "nice": int, "num_threads": int}``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict


class _Emitter:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self._last_progress = 0.0

    def __call__(self, event: Dict[str, Any]) -> None:
        clean = {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)) for k, v in event.items()}
        line = json.dumps(clean, default=str)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def progress(self, done: int, total, message: str = "") -> None:
        now = time.monotonic()
        if total is not None and done < total and now - self._last_progress < 0.1:
            return  # the GUI polls every 100 ms; more is noise
        self._last_progress = now
        self({"type": "progress", "done": done, "total": total, "message": message})


def _watch_stdin(token) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            token.cancel()
            return
    token.cancel()  # stdin closed: the parent is gone or wants us to stop


def _register(result, job: Dict[str, Any], emit: _Emitter) -> None:
    reg = job.get("register")
    if reg is None:
        return
    from ..weights import register_checkpoint

    last = result.history[-1] if result.history else {}
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    # SAM2-family weights need their architecture in the registry (track / widgets build from the name)
    sam2_config = (job.get("config") or {}).get("sam2_config")
    entry = register_checkpoint(
        result.best_checkpoint, name=reg.get("name"), method=job["method"].split(":")[-1],
        base=reg.get("base"), metrics=metrics, config=sam2_config,
    )
    emit({"type": "registered", "name": str(getattr(entry, "name", entry)), "path": str(result.best_checkpoint)})


def run_job(job: Dict[str, Any], emit: _Emitter) -> int:
    for p in job.get("sys_path") or []:
        if p not in sys.path:
            sys.path.append(p)
    if job.get("nice"):
        try:
            os.nice(int(job["nice"]))  # training yields the CPU to the GUI
        except (AttributeError, OSError):
            pass
    emit.progress(0, None, "loading PyTorch")
    import torch

    if job.get("num_threads"):
        torch.set_num_threads(int(job["num_threads"]))
    from ..errors import SurgsegError
    from ..progress import CancelToken
    from .trainer import train

    token = CancelToken()
    threading.Thread(target=_watch_stdin, args=(token,), daemon=True).start()
    on_event = emit
    if job.get("plot", True):
        from .curves import CurveRecorder

        curves = CurveRecorder(Path(job["run_dir"]) / "curves.png",
                               on_plot=lambda path: emit({"type": "plot", "path": str(path)}))

        def on_event(event: Dict[str, Any]) -> None:
            emit(event)
            curves(event)

    emit.progress(0, None, "preparing the run")
    try:
        result = train(job["method"], job.get("config") or {}, run_dir=job["run_dir"], resume=bool(job.get("resume")),
                       progress=emit.progress, cancel=token, on_event=on_event)
        if job.get("plot", True):
            curves.flush()
        _register(result, job, emit)
    except SurgsegError as exc:
        emit({"type": "error", "kind": type(exc).__name__, "message": str(exc)})
        return 1
    except Exception as exc:  # unexpected: the message for the user, the traceback for the log
        traceback.print_exc(file=sys.stderr)
        emit({"type": "error", "kind": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"})
        return 2
    emit({"type": "finished", "stopped": result.stopped, "best_checkpoint": str(result.best_checkpoint),
          "last_checkpoint": str(result.last_checkpoint), "best_metric": result.best_metric})
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    emit = _Emitter(sys.stdout)
    if len(argv) != 1:
        emit({"type": "error", "kind": "usage", "message": "usage: python -m surgseg_core.training.worker JOB.json"})
        return 2
    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        emit({"type": "error", "kind": "ConfigError", "message": f"cannot read training job {argv[0]}: {exc}"})
        return 2
    return run_job(job, emit)


if __name__ == "__main__":
    sys.exit(main())
