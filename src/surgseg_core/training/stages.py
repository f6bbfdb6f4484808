"""Training in stages: each stage is an ordinary ``train`` run in its own
folder (``run_dir/<stage name>``) that starts from the previous stage's best
checkpoint. Liver's two-stage recipe (L3D, then P2ILF) and SAM2 recipes
(heads first, then more of the model) are users of it.

With ``resume`` a finished stage (its best checkpoint and a ``stage_done``
marker) is not retrained, and an interrupted stage resumes from its
``last.pt``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from ..errors import ConfigError
from ..progress import CancelToken, ProgressCallback

log = logging.getLogger(__name__)

MARKER = "stage_done"


@dataclass
class Stage:
    """One stage. ``config``: its full user config (the method's defaults
    are merged under it by ``train``). ``carry``: config keys (the
    architecture) taken from the previous stage so its weights fit; the
    stage may repeat them but not change them. ``init_from_previous``:
    start from the previous stage's best checkpoint (``init_weights``)."""

    name: str
    config: Mapping[str, Any]
    carry: Sequence[str] = ()
    init_from_previous: bool = True
    method: Optional[str] = None  # default: the run's method


@dataclass
class StagesResult:
    results: List[Any] = field(default_factory=list)  # TrainResult per finished/started stage
    stopped: Optional[str] = None  # "cancelled" when a stage was cancelled


def _stage_progress(progress: Optional[ProgressCallback], i: int, n: int):
    if progress is None:
        return None

    def cb(done, total, message=""):
        progress(done, total, f"stage {i}/{n} {message}".strip())

    return cb


def stage_config(stage: Stage, previous: Optional[Mapping[str, Any]], previous_best: Optional[Path]) -> dict:
    """The config a stage trains with: carried keys, then its own, then the
    previous best checkpoint as ``init_weights``."""
    own = dict(stage.config)
    prev = dict(previous or {})
    clash = [k for k in stage.carry if k in own and k in prev and own[k] != prev[k]]
    if clash:
        raise ConfigError(f"stage {stage.name!r} must use the previous stage's architecture; "
                          f"differing keys: {', '.join(clash)}")
    cfg = {**{k: prev[k] for k in stage.carry if k in prev}, **own}
    if stage.init_from_previous and previous_best is not None:
        cfg["init_weights"] = str(previous_best)
    return cfg


def train_stages(
    method: str,
    stages: Sequence[Stage],
    run_dir: Union[str, Path],
    *,
    resume: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> StagesResult:
    """Train ``stages`` one after the other; see the module docstring."""
    from .trainer import TrainResult, train

    if not stages:
        raise ConfigError("train_stages: no stages given")
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or any(not n or "/" in n or "\\" in n for n in names):
        raise ConfigError(f"stage names must be unique folder names, got {names}")
    run_dir = Path(run_dir)
    out = StagesResult()
    prev_cfg: Optional[Mapping[str, Any]] = None
    prev_best: Optional[Path] = None
    n = len(stages)
    for i, stage in enumerate(stages, 1):
        sdir = run_dir / stage.name
        best = sdir / "checkpoints" / "best.pt"
        cfg = stage_config(stage, prev_cfg, prev_best)
        if resume and (sdir / MARKER).is_file() and best.is_file():
            log.info("stage %s already finished in %s; going on", stage.name, sdir)
            result = TrainResult(sdir, best, sdir / "checkpoints" / "last.pt", float("nan"))
        else:
            result = train(stage.method or method, cfg, run_dir=sdir,
                           resume=resume and (sdir / "checkpoints" / "last.pt").is_file(),
                           progress=_stage_progress(progress, i, n), cancel=cancel)
            out.results.append(result)
            if result.stopped == "cancelled":
                out.stopped = "cancelled"
                return out
            if not Path(result.best_checkpoint).is_file():
                raise ConfigError(f"stage {stage.name!r} produced no best checkpoint in {sdir}")
            (sdir / MARKER).write_text(str(result.best_checkpoint) + "\n", encoding="utf-8")
            prev_cfg, prev_best = cfg, Path(result.best_checkpoint)
            continue
        out.results.append(result)
        prev_cfg, prev_best = cfg, Path(result.best_checkpoint)
    return out
