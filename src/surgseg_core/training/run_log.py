"""The run folder: ``config.yaml``, ``metrics.jsonl``, TensorBoard events
(when ``tensorboard`` is installed) and ``checkpoints/``.

``metrics.jsonl`` holds one JSON object per line: ``{"type": "epoch", ...}``
after each epoch and, with ``log_every`` > 0, ``{"type": "step", ...}``.
Only rank 0 writes.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..atomic import atomic_write_text

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


def read_metrics(path: os.PathLike | str, kind: Optional[str] = "epoch") -> List[Dict[str, Any]]:
    """Lines of a metrics.jsonl (``kind=None``: all of them). A torn last
    line (process killed mid-write) is ignored."""
    path = Path(path)
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or rec.get("type") == kind:
            out.append(rec)
    return out


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:  # optional dependency
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed; metrics go to metrics.jsonl only")

    def truncate_after(self, epoch: int, step: int) -> None:
        """On resume: drop lines written after the checkpoint we resume from
        (a kill between logging and checkpointing must not duplicate them)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        keep = [
            r for r in read_metrics(self.metrics_path, kind=None)
            if (r.get("type") == "epoch" and r.get("epoch", 0) < epoch)
            or (r.get("type") == "step" and r.get("step", 0) <= step)
        ]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {k: _jsonable(v) for k, v in record.items()}
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self._tb is not None:
            x = rec.get("step") if rec.get("type") == "step" else rec.get("epoch")
            prefix = "step/" if rec.get("type") == "step" else "epoch/"
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self._tb.add_scalar(prefix + k, v, x)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
