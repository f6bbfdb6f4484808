"""Helpers shared by the demo steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def sample_clip() -> Path:
    """The bundled synthetic clip folder (video.mp4, ground truth)."""
    from ..synth.sample import CLIP_DIR, sample_folder

    return sample_folder(CLIP_DIR)


def bundled_entry(name: str):
    """The registry entry of bundled / registered weights ``name`` when its
    file is present, else None (the step then says it was skipped)."""
    from ..weights import get_entry

    entry = get_entry(name)
    return entry if entry is not None and entry.present else None


def demo_provenance(entry, video, frames, prompts=None, **extra: Any) -> Dict[str, Any]:
    """The record of a demo result made by the registered weights ``entry``."""
    from ..provenance import build_provenance

    model = {"name": entry.name, "variant": entry.variant or entry.method, "checkpoint": entry.path,
             "checkpoint_sha256": entry.sha256}
    return build_provenance(result="labels", source=video, frames=frames, model=model, prompts=prompts, **extra)


def missing_weights_lines(title: str, name: str, summary: Dict[str, Any], key: str) -> list:
    summary[key] = {"skipped": f"weights {name!r} not found"}
    return [title, f"Skipped: the demo weights `{name}` are not in `sample_data/` (run "
                   "`bash scripts/train_demo_weights.sh` to make them).", ""]


def card_score(entry, key: str) -> Optional[float]:
    """A held-out score from a model card's metrics (weights.json)."""
    value = (entry.metrics or {}).get(key) if entry is not None else None
    return None if value is None else float(value)


def score_record(value: float, heldout: Optional[float], what: str, margin: float) -> Dict[str, Any]:
    """One line of ``scores.json``: this run's score beside the model card's
    held-out score, and whether it is within ``margin`` below it."""
    ok = None if heldout is None or value != value else bool(value >= heldout - margin)
    return {"score": value, "what": what, "heldout": heldout, "margin": margin, "within_margin": ok}
