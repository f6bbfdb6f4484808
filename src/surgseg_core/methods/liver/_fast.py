"""Small helpers for the post-processing hot path: numpy versions, and the
compiled kernels (``_kernels.pyx``) that replace them when they are built.

The functions taking ``(flat, w, pts)`` work on a C-contiguous image raveled
to 1-D with a background margin of at least one pixel on every side (then a
neighbour of a foreground pixel is its flat index + a fixed offset), ``pts``
being the sorted flat indices of its non-zero pixels.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

if os.environ.get("SURGSEG_NO_COMPILED"):  # force the numpy versions (debugging, comparisons)
    kernels = None
else:
    try:
        from . import _kernels as kernels
    except ImportError:  # not built (no C compiler at install time): numpy versions, same results
        kernels = None


def nonzero2d(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the non-zero pixels of a 2-D array, row-major order.

    Same result as ``np.nonzero`` but ~20x faster on numpy 2.x, whose 2-D
    nonzero takes ~0.2 ms on a 416 x 320 frame while ``flatnonzero`` of a
    contiguous boolean array takes ~10 us.
    """
    flat = np.flatnonzero(np.ascontiguousarray(mask).ravel() != 0)
    return np.divmod(flat, mask.shape[1])


def has_margin(mask: np.ndarray) -> bool:
    """True when the outermost rows and columns of a 2-D mask are background."""
    return not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def flat_view(mask: np.ndarray, labels: bool = False) -> Tuple[np.ndarray, int, int]:
    """``mask`` as (flat array, row stride, padding) with a background margin:
    a view (padding 0) when ``mask`` is C-contiguous, has one and has the
    wanted dtype, else a copy with a 1-px frame (padding 1). The dtype is bool,
    or with ``labels=True`` uint8 keeping the label values."""
    dtype = np.dtype(np.uint8) if labels else np.dtype(bool)
    if mask.dtype == dtype and mask.flags.c_contiguous and has_margin(mask):
        return mask.ravel(), mask.shape[1], 0
    m = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype)
    m[1:-1, 1:-1] = mask if labels else (mask != 0)
    return m.ravel(), m.shape[1], 1


# Euler number from the foreground pixels -------------------------------------------

# 12 x (Q1 - Q3 - 2 QD) contribution of a 2 x 2 window, divided by its number
# of foreground pixels (every window is seen once per foreground pixel in it)
_QUAD_WEIGHT = np.zeros(16, np.int64)
_QUAD_WEIGHT[[1, 2, 4, 8]] = 3
_QUAD_WEIGHT[[7, 11, 13, 14]] = -1
_QUAD_WEIGHT[[6, 9]] = -3


def euler_number8(mask: np.ndarray) -> int:
    """Euler number (components - holes) of a 2-D mask with 8-connected
    foreground and 4-connected background, from 2 x 2 bit-quad counts (Gray 1971):
    E = (n(Q1) - n(Q3) - 2 n(QD)) / 4. Codes are computed only for the four
    windows around each foreground pixel (the others are Q0): one scan of the
    mask finds the pixels, the rest follows their number (skimage.measure.
    euler_number and a labelling of the background work on the whole box)."""
    flat, w, _ = flat_view(mask)
    p = np.flatnonzero(flat)
    if len(p) == 0:
        return 0
    if kernels is not None:
        return kernels.euler8(flat.view(np.uint8), p, w)
    t = np.concatenate([p, p - 1, p - w, p - w - 1])  # top-left corners of the windows holding p
    f = flat.view(np.uint8)
    code = f[t] + (f[t + 1] << 1) + (f[t + w] << 2) + (f[t + w + 1] << 3)
    return int(_QUAD_WEIGHT[code].sum()) // 12


# Zhang-Suen on the foreground pixels only ------------------------------------------
# skimage's Zhang-Suen is a Cython loop over every pixel of the image in every
# pass (~0.4 ms for a curve's 300 x 416 bounding box) though a landmark fills
# a few percent of it. The algorithm is parallel within a pass (each decision
# reads the image as it was when the pass began), so it can run on the list of
# foreground pixels with one gather per neighbour, with skimage's table and
# its loop, giving the same skeleton. Neighbour code: bit 0 NW, 1 N, 2 NE, 3 E,
# 4 SE, 5 S, 6 SW, 7 W; table value 1: removable in the first pass, 2: in the
# second, 3: in both (skimage/morphology/_skeletonize_various_cy.pyx).
_ZS_LUT = np.array([
    0, 0, 0, 1, 0, 0, 1, 3, 0, 0, 3, 1, 1, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 3, 0, 3, 3,
    0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 2, 2,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 2, 0,
    0, 0, 3, 1, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 3, 1, 3, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 0, 1, 0, 0, 0, 0, 2, 2, 0, 0, 2, 0, 0, 0,
], dtype=np.uint8)
_ZS_REMOVE = ((_ZS_LUT & 1) > 0, (_ZS_LUT & 2) > 0)


def zhang_suen_flat(flat: np.ndarray, w: int, pts: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning in place on a flat boolean image with a margin
    (module docstring); returns the sorted flat indices of the skeleton: the
    pixels of ``skimage.morphology.skeletonize(mask, method="zhang")``.
    In numpy, each pass costs in proportion to the pixels left. (Updating the
    codes only around removed pixels was measured no faster: at ~1-3 k
    pixels the per-call overhead dominates.)"""
    if kernels is not None:
        return kernels.zhang_suen(flat.view(np.uint8), pts, w, _ZS_LUT)
    offsets = np.array([-w - 1, -w, -w + 1, 1, w + 1, w, w - 1, -1], dtype=np.int64)
    removed = True
    while removed and len(pts):
        removed = False
        for table in _ZS_REMOVE:
            code = np.packbits(flat[pts[:, None] + offsets], axis=1, bitorder="little")[:, 0]
            rm = table[code]
            if rm.any():
                flat[pts[rm]] = False
                pts = pts[~rm]
                removed = True
    return pts


def zhang_suen_points(mask: np.ndarray, overwrite: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, cols), row-major, of the Zhang-Suen skeleton of a 2-D mask (see
    :func:`zhang_suen_flat`). ``overwrite``: a boolean mask with a margin may
    be thinned in place instead of copied."""
    flat, w, pad = flat_view(mask)
    if pad == 0 and not overwrite:
        flat = flat.copy()
    r, c = np.divmod(zhang_suen_flat(flat, w, np.flatnonzero(flat)), w)
    return r - pad, c - pad


def zhang_suen(mask: np.ndarray) -> np.ndarray:
    """Boolean Zhang-Suen skeleton of a 2-D mask (see :func:`zhang_suen_points`)."""
    out = np.zeros(mask.shape, bool)
    out[zhang_suen_points(mask)] = True
    return out
