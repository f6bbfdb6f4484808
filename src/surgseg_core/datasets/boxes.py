"""Box prompts from masks: the one mask-to-box rule of the evaluations, the
demo and the method datasets."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def mask_box(mask: np.ndarray, obj_id: int) -> Optional[Tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of the pixels equal to ``obj_id`` in inclusive pixel
    coordinates (as SAM2's training derives boxes from masks; a one-pixel-wide
    object gives x1 == x0, which the engine accepts), None if absent."""
    ys, xs = np.nonzero(np.asarray(mask) == obj_id)
    if xs.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
