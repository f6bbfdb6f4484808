"""Small numpy helpers for the post-processing hot path."""
from __future__ import annotations

from typing import Tuple

import numpy as np


def nonzero2d(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the non-zero pixels of a 2-D array, row-major order.

    Same result as ``np.nonzero`` but ~20x faster on numpy 2.x, whose 2-D
    nonzero takes ~0.2 ms on a 416 x 320 frame while ``flatnonzero`` of a
    contiguous boolean array takes ~10 us.
    """
    flat = np.flatnonzero(np.ascontiguousarray(mask).ravel() != 0)
    return np.divmod(flat, mask.shape[1])
