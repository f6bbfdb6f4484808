"""Two-stage training of the paper (sec. 3.1 / 4.3): train on one dataset
(L3D in the paper), then fine-tune on another (P2ILF) starting from stage 1's
BEST checkpoint (the reference code kept the last one), both with the shared
trainer."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ...errors import ConfigError
from ...progress import CancelToken, ProgressCallback

log = logging.getLogger(__name__)

# Paper sec. 4.3: fine-tuning with lr 1e-4, batch 8, patience 7 and
# 0.75 wCE + 0.25 Focal-Tversky (their Table 6 setting).
FINE_TUNE_DEFAULTS: Dict[str, Any] = {
    "lr": 1e-4,
    "batch_size": 8,
    "loss_alpha": 0.75,
    "loss_beta": 0.0,
    "loss_gamma": 0.0,
    "loss_delta": 0.25,
}


def _stage_progress(progress: Optional[ProgressCallback], stage: int):
    if progress is None:
        return None

    def cb(done, total, message=""):
        progress(done, total, f"stage {stage}/2 {message}".strip())

    return cb


def train_two_stage(stage1_cfg: Mapping[str, Any], stage2_cfg: Mapping[str, Any], run_dir, *,
                    resume: bool = False, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Tuple[Any, Any]:
    """Stage 1 in ``run_dir/stage1``, stage 2 in ``run_dir/stage2``; returns
    both ``TrainResult``. Stage 2 starts from stage 1's best checkpoint
    (``init_weights``) with :data:`FINE_TUNE_DEFAULTS` under ``stage2_cfg``.
    Architecture keys are taken from stage 1 so the weights fit. With
    ``resume`` a finished stage 1 (its ``best.pt`` and a ``done`` marker) is not
    retrained and an interrupted stage resumes from its ``last.pt``."""
    from ...training.trainer import train

    run_dir = Path(run_dir)
    s1_dir, s2_dir = run_dir / "stage1", run_dir / "stage2"
    marker = s1_dir / "stage_done"
    if resume and marker.is_file() and (s1_dir / "checkpoints" / "best.pt").is_file():
        from ...training.trainer import TrainResult

        best = s1_dir / "checkpoints" / "best.pt"
        r1 = TrainResult(s1_dir, best, s1_dir / "checkpoints" / "last.pt", float("nan"))
        log.info("stage 1 already finished in %s; going on with stage 2", s1_dir)
    else:
        r1 = train("liver", dict(stage1_cfg), run_dir=s1_dir,
                   resume=resume and (s1_dir / "checkpoints" / "last.pt").is_file(),
                   progress=_stage_progress(progress, 1), cancel=cancel)
        if r1.stopped == "cancelled":
            return r1, None
        if not Path(r1.best_checkpoint).is_file():
            raise ConfigError(f"stage 1 produced no best checkpoint in {s1_dir}")
        marker.write_text(str(r1.best_checkpoint) + "\n", encoding="utf-8")
    arch_keys = ("arch", "encoder", "encoder_depth", "decoder_channels")
    clash = [k for k in arch_keys if k in stage2_cfg and k in stage1_cfg and stage2_cfg[k] != stage1_cfg[k]]
    if clash:
        raise ConfigError(f"stage 2 must use stage 1's architecture; differing keys: {', '.join(clash)}")
    cfg2 = {**FINE_TUNE_DEFAULTS, **{k: stage1_cfg[k] for k in arch_keys if k in stage1_cfg}, **dict(stage2_cfg),
            "init_weights": str(r1.best_checkpoint), "encoder_weights": None}
    r2 = train("liver", cfg2, run_dir=s2_dir, resume=resume and (s2_dir / "checkpoints" / "last.pt").is_file(),
               progress=_stage_progress(progress, 2), cancel=cancel)
    return r1, r2
