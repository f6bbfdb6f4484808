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


# Euler number from the foreground pixels -------------------------------------------

def _padded_flat(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """Boolean copy of ``mask`` with a 1-px background frame, flattened, and its row stride."""
    m = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), bool)
    m[1:-1, 1:-1] = mask
    return m.ravel(), m.shape[1]


# 12 x (Q1 - Q3 - 2 QD) contribution of a 2 x 2 window, divided by its number
# of foreground pixels (every window is seen once per foreground pixel in it)
_QUAD_WEIGHT = np.zeros(16, np.int64)
_QUAD_WEIGHT[[1, 2, 4, 8]] = 3
_QUAD_WEIGHT[[7, 11, 13, 14]] = -1
_QUAD_WEIGHT[[6, 9]] = -3


def euler_number8(mask: np.ndarray) -> int:
    """Euler number (components - holes) of a 2-D mask with 8-connected
    foreground and 4-connected background, from 2 x 2 bit-quad counts (Gray 1971):
    E = (n(Q1) - n(Q3) - 2 n(QD)) / 4. Only the windows that contain a
    foreground pixel are visited (the others are Q0), so the cost follows the
    foreground, not the image area (skimage.measure.euler_number scans it)."""
    flat, w = _padded_flat(mask != 0)
    p = np.flatnonzero(flat)
    if len(p) == 0:
        return 0
    t = np.concatenate([p, p - 1, p - w, p - w - 1])  # top-left corners of the windows holding p
    f = flat.view(np.uint8)
    code = f[t] + (f[t + 1] << 1) + (f[t + w] << 2) + (f[t + w + 1] << 3)
    return int(_QUAD_WEIGHT[code].sum()) // 12
