"""Which frames to correct next: the ones the model is least sure about.

Two scores per frame, higher = more worth correcting:

* ``1 - mean_pixels(max_class p)``: low confidence of the predicted class
  (for a single foreground probability map p, the max is ``max(p, 1 - p)``);
* ``1 - IoU(A_t, B_t)``: disagreement of two mask sets for the same frames,
  e.g. propagated forwards and backwards through the video.

Frames are read one at a time, so lazy video-sized arrays are fine.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from ..errors import DatasetError


def confidence_uncertainty(prob: Any) -> float:
    """``1 - mean max-probability`` of one frame: (H, W) foreground
    probability or (C, H, W) class probabilities."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 2:
        conf = np.maximum(p, 1.0 - p)
    elif p.ndim == 3:
        conf = p.max(axis=0)
    else:
        raise DatasetError(f"probability map must be (H, W) or (C, H, W), got shape {p.shape}")
    return float(1.0 - conf.mean())


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two label masks: mean over the classes present in either
    (foreground for boolean masks); two empty masks agree (IoU 1)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise DatasetError(f"mask sets differ in frame size: {a.shape} vs {b.shape}")
    if a.dtype == bool or b.dtype == bool:
        a, b = a.astype(bool), b.astype(bool)
        classes: Sequence[Any] = [True]
    else:
        classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c != 0]
    if len(classes) == 0:
        return 1.0
    ious = []
    for c in classes:
        ma, mb = a == c, b == c
        union = np.count_nonzero(ma | mb)
        ious.append(np.count_nonzero(ma & mb) / union if union else 1.0)
    return float(np.mean(ious))


def frame_scores(prob_maps_or_scores: Any, other_masks: Any = None) -> np.ndarray:
    """One uncertainty score per frame (see module doc)."""
    if other_masks is not None:
        n = len(prob_maps_or_scores)
        if len(other_masks) != n:
            raise DatasetError(f"the two mask sets have {n} and {len(other_masks)} frames")
        return np.array([1.0 - mask_iou(prob_maps_or_scores[t], other_masks[t]) for t in range(n)], dtype=float)
    first = np.asarray(prob_maps_or_scores[0]) if len(prob_maps_or_scores) else np.zeros(())
    if first.ndim == 0:  # already one score per frame
        return np.asarray(prob_maps_or_scores, dtype=float).reshape(-1)
    return np.array([confidence_uncertainty(prob_maps_or_scores[t]) for t in range(len(prob_maps_or_scores))])


def rank_frames_by_uncertainty(
    prob_maps_or_scores: Any, k: int = 10, *, other_masks: Any = None
) -> List[Tuple[int, float]]:
    """Top-``k`` frames to correct next as ``[(frame, score), ...]``, most
    uncertain first (ties: earlier frame first).

    ``prob_maps_or_scores``: per-frame scores (T,), foreground probabilities
    (T, H, W) or class probabilities (T, C, H, W); with ``other_masks`` both
    arguments are mask sets (T, H, W) and the score is ``1 - IoU``.
    """
    if k < 1:
        raise DatasetError(f"k must be at least 1, got {k}")
    scores = frame_scores(prob_maps_or_scores, other_masks)
    if scores.size == 0:
        return []
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.lexsort((np.arange(len(finite)), -finite))[:k]
    return [(int(i), float(scores[i])) for i in order]
