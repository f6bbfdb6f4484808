"""Heatmap targets, losses and peak decoding.

Coordinates: (x, y) pixels, origin at the centre of the top-left pixel, in the
resolution of the heatmap unless said otherwise; :func:`to_heatmap` /
:func:`to_image` convert between image and heatmap pixels (pixel centres map
to pixel centres).

* Gaussian targets: ``exp(-d^2 / (2 sigma^2))`` around each point, the
  maximum where two overlap (one channel per landmark type).
* Mask-augmented target (the paper's "direct" ablation, sec. 2.4): Gaussian
  values inside the keypoint regions Omega_kpt (discs of ``kpt_radius``
  around the points), ``alpha`` (0.1) on the tool mask outside them, 0
  elsewhere; :func:`gated_loss` weights the three regions separately
  (keypoint regions the most).
* :func:`decode_peaks`: local maxima above a threshold, non-maximum
  suppression over a radius, sub-pixel refinement by a parabola through the
  peak and its two neighbours on each axis, at most ``max_peaks``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

Points = Sequence[Tuple[float, float]]


def to_heatmap(xy, image_size: Tuple[int, int], heatmap_size: Tuple[int, int]) -> np.ndarray:
    """Image (x, y) -> heatmap (x, y); sizes are (width, height)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    scale = np.array([heatmap_size[0] / image_size[0], heatmap_size[1] / image_size[1]])
    return (xy + 0.5) * scale - 0.5


def to_image(xy, image_size: Tuple[int, int], heatmap_size: Tuple[int, int]) -> np.ndarray:
    """Heatmap (x, y) -> image (x, y); sizes are (width, height)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    scale = np.array([image_size[0] / heatmap_size[0], image_size[1] / heatmap_size[1]])
    return (xy + 0.5) * scale - 0.5


def gaussian_heatmap(points: Points, height: int, width: int, sigma: float) -> np.ndarray:
    """(H, W) float32: the maximum over ``points`` of unit-peak Gaussians."""
    out = np.zeros((height, width), np.float32)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for x, y in points:
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma * sigma))
        np.maximum(out, g, out=out)
    return out


def keypoint_region(points: Points, height: int, width: int, radius: float) -> np.ndarray:
    """(H, W) bool: pixels within ``radius`` of any point (Omega_kpt)."""
    out = np.zeros((height, width), bool)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for x, y in points:
        out |= (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
    return out


def targets(points_by_type: Sequence[Points], height: int, width: int, sigma: float) -> np.ndarray:
    """(C, H, W) Gaussian targets, one channel per landmark type."""
    return np.stack([gaussian_heatmap(p, height, width, sigma) for p in points_by_type])


def region_map(points_by_type: Sequence[Points], mask: np.ndarray, sigma: float,
               kpt_radius: Optional[float] = None) -> np.ndarray:
    """(C, H, W) uint8 partition: 2 keypoint region, 1 tool mask outside it, 0 background."""
    h, w = mask.shape
    radius = 3.0 * sigma if kpt_radius is None else float(kpt_radius)
    out = np.zeros((len(points_by_type), h, w), np.uint8)
    for c, pts in enumerate(points_by_type):
        out[c][mask.astype(bool)] = 1
        out[c][keypoint_region(pts, h, w, radius)] = 2
    return out


def mask_augmented_targets(points_by_type: Sequence[Points], mask: np.ndarray, sigma: float, alpha: float = 0.1,
                           kpt_radius: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(target (C, H, W) float32, regions (C, H, W) uint8): Gaussian values P(x)
    inside Omega_kpt, ``alpha`` on the tool mask outside it, 0 elsewhere."""
    h, w = mask.shape
    regions = region_map(points_by_type, mask, sigma, kpt_radius)
    gauss = targets(points_by_type, h, w, sigma)
    target = np.where(regions == 2, gauss, np.where(regions == 1, np.float32(alpha), np.float32(0.0)))
    return target.astype(np.float32), regions


def gate_weights(regions: torch.Tensor, weights: Tuple[float, float, float]) -> torch.Tensor:
    """Region map (0 bg, 1 mask, 2 keypoint) -> per-pixel weights (bg, mask, kpt)."""
    lut = torch.tensor(weights, dtype=torch.float32, device=regions.device)
    return lut[regions.long()]


def gated_loss(pred: torch.Tensor, target: torch.Tensor, regions: torch.Tensor,
               weights: Tuple[float, float, float] = (1.0, 1.0, 10.0)) -> torch.Tensor:
    """L_direct = mean over pixels of (G * (pred - target))^2, G from ``regions``
    with ``weights`` = (background, tool mask, keypoint region)."""
    g = gate_weights(regions, weights)
    return ((g * (pred.float() - target.float())) ** 2).mean()


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||H - H_gt||^2 as a mean over pixels (the scale of the sum is a constant)."""
    return ((pred.float() - target.float()) ** 2).mean()


def decode_peaks(heatmap: np.ndarray, threshold: float = 0.3, nms_radius: int = 3,
                 max_peaks: Optional[int] = 1) -> np.ndarray:
    """(N, 3) rows (x, y, score) in heatmap pixels, best first: local maxima
    (within ``nms_radius``) at or above ``threshold``, sub-pixel refined, at
    most ``max_peaks`` (None: all)."""
    from scipy import ndimage

    h = np.asarray(heatmap, np.float32)
    if h.ndim != 2:
        raise ValueError(f"decode_peaks: expected a (H, W) heatmap, got shape {h.shape}")
    if not np.isfinite(h).all():
        h = np.nan_to_num(h, nan=-np.inf)
    size = 2 * max(0, int(nms_radius)) + 1
    local_max = ndimage.maximum_filter(h, size=size, mode="nearest")
    ys, xs = np.nonzero((h >= local_max) & (h >= threshold))
    if len(ys) == 0:
        return np.zeros((0, 3), np.float64)
    scores = h[ys, xs]
    order = np.argsort(-scores, kind="stable")
    kept = []
    r2 = float(max(0, int(nms_radius))) ** 2
    for j in order:  # plateaus: several equal maxima within the radius count once
        if any((xs[j] - xs[i]) ** 2 + (ys[j] - ys[i]) ** 2 <= r2 for i in kept):
            continue
        kept.append(j)
        if max_peaks is not None and len(kept) >= int(max_peaks):
            break
    out = []
    H, W = h.shape
    for j in kept:
        y, x = int(ys[j]), int(xs[j])
        dx = _parabola(h[y, x - 1], h[y, x], h[y, x + 1]) if 0 < x < W - 1 else 0.0
        dy = _parabola(h[y - 1, x], h[y, x], h[y + 1, x]) if 0 < y < H - 1 else 0.0
        out.append((x + dx, y + dy, float(h[y, x])))
    return np.asarray(out, np.float64)


def _parabola(left: float, centre: float, right: float) -> float:
    """Offset of the vertex of the parabola through (-1, l), (0, c), (1, r), within +-0.5."""
    denom = left - 2.0 * centre + right
    if not np.isfinite(denom) or denom >= 0:  # not a maximum (flat or convex): stay on the pixel
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def decode_heatmaps(heatmaps: np.ndarray, types: Sequence[str], threshold: float, nms_radius: int,
                    max_peaks: Optional[int]) -> Dict[str, np.ndarray]:
    """(C, H, W) -> {type: (N, 3) x, y, score} in heatmap pixels."""
    return {t: decode_peaks(heatmaps[c], threshold, nms_radius, max_peaks) for c, t in enumerate(types)}


__all__ = ["gaussian_heatmap", "targets", "keypoint_region", "region_map", "mask_augmented_targets", "gate_weights",
           "gated_loss", "heatmap_loss", "decode_peaks", "decode_heatmaps", "to_heatmap", "to_image"]
