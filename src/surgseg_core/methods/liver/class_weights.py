"""Class weights for the weighted cross-entropy (paper eq. 1):

    W_i = max(1, ln(|M| / |M_i|))

with M all training mask pixels and M_i those of class i. A class that never
occurs (|M_i| = 0) has an undefined ratio; it gets the largest weight of the
classes that do occur (it cannot contribute to the loss anyway, and this keeps
the weights finite), or 1 when nothing occurs at all.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ...errors import DatasetError


def count_class_pixels(masks: Iterable[np.ndarray], num_classes: int = 4) -> np.ndarray:
    """Pixel count per class over an iterable of index masks."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        mask = np.asarray(mask)
        if mask.size and (mask.max() >= num_classes or mask.min() < 0):
            raise DatasetError(
                f"mask has label {int(mask.max())} but the liver method has {num_classes} classes (0..{num_classes - 1})"
            )
        counts += np.bincount(mask.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return counts


def class_weights_from_counts(counts) -> np.ndarray:
    """Paper eq. 1 on pixel counts; natural logarithm."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    weights = np.ones_like(counts)
    present = counts > 0
    if total > 0 and present.any():
        weights[present] = np.maximum(1.0, np.log(total / counts[present]))
        weights[~present] = weights[present].max()
    return weights
