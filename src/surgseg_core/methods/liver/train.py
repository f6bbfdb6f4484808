"""Two-stage training of the paper (sec. 3.1 / 4.3): train on one dataset
(L3D in the paper), then fine-tune on another (P2ILF) starting from stage 1's
BEST checkpoint (the reference code kept the last one), both with the shared
trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ...progress import CancelToken, ProgressCallback

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


ARCH_KEYS = ("arch", "encoder", "encoder_depth", "decoder_channels")


def train_two_stage(stage1_cfg: Mapping[str, Any], stage2_cfg: Mapping[str, Any], run_dir, *,
                    resume: bool = False, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Tuple[Any, Any]:
    """Stage 1 in ``run_dir/stage1``, stage 2 in ``run_dir/stage2``; returns
    both ``TrainResult`` (stage 2's is None when stage 1 was cancelled).
    Stage 2 starts from stage 1's best checkpoint (``init_weights``) with
    :data:`FINE_TUNE_DEFAULTS` under ``stage2_cfg``. Architecture keys are
    taken from stage 1 so the weights fit. With ``resume`` a finished stage 1
    is not retrained and an interrupted stage resumes from its ``last.pt``
    (the general mechanism: :func:`~surgseg_core.training.stages.train_stages`)."""
    from ...training.stages import Stage, train_stages

    stages = [
        Stage("stage1", dict(stage1_cfg)),
        Stage("stage2", {**FINE_TUNE_DEFAULTS, **dict(stage2_cfg), "encoder_weights": None}, carry=ARCH_KEYS),
    ]
    out = train_stages("liver", stages, Path(run_dir), resume=resume, progress=progress, cancel=cancel)
    return out.results[0], (out.results[1] if len(out.results) > 1 else None)
