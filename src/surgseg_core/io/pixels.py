"""Turning whatever pixels a TIFF or image file holds into RGB uint8 frames."""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import VideoError

log = logging.getLogger(__name__)


def intensity_scale(path, dtype: np.dtype, samples: Sequence[np.ndarray], warn: bool = True) -> Optional[float]:
    """Factor mapping non-8-bit samples to 0..255, or None for uint8.

    Integer data wider than 8 bits is scaled by the smallest full bit depth
    that holds the sampled maximum (12-bit data in 16-bit containers is common
    in endoscopy exports), so one factor serves the whole stack (no flicker).
    Float data must lie in 0..1.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return None
    if dtype == bool:
        return 255.0
    for s in samples:
        _check_finite(s, str(path))
    vmax = max(float(np.max(s)) if s.size else 0.0 for s in samples)
    vmin = min(float(np.min(s)) if s.size else 0.0 for s in samples)
    if np.issubdtype(dtype, np.integer):
        if vmin < 0:
            raise VideoError(f"{path}: signed {dtype} pixels with negative values are not supported; "
                             "convert the stack to unsigned 8-bit first")
        bits = max(8, int(math.ceil(math.log2(vmax + 1))) if vmax > 0 else 8)
        scale = 255.0 / (2**bits - 1)
        (log.warning if warn else log.debug)(
            "%s: %s pixels rescaled to 8 bits (0..%d -> 0..255, bit depth estimated from sampled frames)",
            path, dtype, 2**bits - 1)
        return scale
    if np.issubdtype(dtype, np.floating):
        if vmin < 0 or vmax > 1.0:
            raise VideoError(f"{path}: floating-point pixels must lie in 0..1 (found {vmin:g}..{vmax:g}); "
                             "convert the stack to 8-bit first")
        (log.warning if warn else log.debug)("%s: floating-point pixels in 0..1 rescaled to 0..255", path)
        return 255.0
    raise VideoError(f"{path}: unsupported pixel type {dtype}")


def _check_finite(a: np.ndarray, where: str) -> None:
    # NaN would cast to an arbitrary byte (black on x86): a blank frame, not an error
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise VideoError(f"{where}: {bad} of {a.size} pixel values are NaN or infinite (a failed export or "
                         "reconstruction?); replace them (e.g. numpy.nan_to_num) and save the stack again")


def to_rgb8(a: np.ndarray, scale: Optional[float], where: str) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of any supported dtype -> (H, W, 3) uint8."""
    _check_finite(a, where)
    if scale is not None:
        a = np.clip(np.rint(a.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise VideoError(f"{where}: unexpected pixel type {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise VideoError(f"{where}: frame has shape {a.shape}, expected (height, width[, channels])")
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 2:  # grey + alpha
        return np.repeat(a[:, :, :1], 3, axis=2)
    if c in (3, 4):
        return np.ascontiguousarray(a[:, :, :3])  # RGBA: alpha dropped
    raise VideoError(f"{where}: frames with {c} channels are not supported (need 1, 3 or 4)")


def frame_to_rgb8(frame, where: str = "frame") -> np.ndarray:
    """One in-memory frame (e.g. a napari layer's) of any supported shape and
    dtype -> (H, W, 3) uint8, with :func:`intensity_scale` estimated from the
    frame itself (a 12-bit frame in uint16 is scaled from 0..4095, not clipped
    at 255)."""
    a = np.asarray(frame)
    return to_rgb8(a, intensity_scale(where, a.dtype, [a], warn=False), where)


def output_size(width: int, height: int, downscale: float) -> tuple:
    return max(1, int(round(width / downscale))), max(1, int(round(height / downscale)))


def resize_area(a: np.ndarray, size: tuple) -> np.ndarray:
    """Area-averaging (box filter) resize of an RGB uint8 frame to (width, height)."""
    if (a.shape[1], a.shape[0]) == tuple(size):
        return a
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BOX))


def sample_positions(n: int, k: int = 8) -> list:
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


Reader = Callable[[int], np.ndarray]
