"""Small vectorised rasterisers for the generator (tapered capsules and thick
polylines). Hand-written because they also return the per-pixel coordinates
across the shape that the metallic shading needs, which no drawing library
gives; polylines use PIL's deterministic line drawing."""
from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np
from PIL import Image, ImageDraw


def segment_frame(
    xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For pixel centres ``xx, yy`` return (t, dist, across): ``t`` the clipped
    position along p0->p1 in [0, 1], ``dist`` the distance to the segment and
    ``across`` the signed distance to the infinite line (left positive)."""
    d = np.asarray(p1, float) - np.asarray(p0, float)
    length = float(np.hypot(*d)) or 1e-9
    rx, ry = xx - p0[0], yy - p0[1]
    t = np.clip((rx * d[0] + ry * d[1]) / length**2, 0.0, 1.0)
    dist = np.hypot(rx - t * d[0], ry - t * d[1])
    across = (rx * -d[1] + ry * d[0]) / length
    return t, dist, across


def tapered_capsule(xx: np.ndarray, yy: np.ndarray, p0, p1, w0: float, w1: float) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean mask of a capsule from p0 (width w0) to p1 (width w1) with round
    caps, and the normalised across-coordinate in [-1, 1] used for shading."""
    t, dist, across = segment_frame(xx, yy, p0, p1)
    half = 0.5 * (w0 + (w1 - w0) * t)
    inside = dist <= half
    return inside, np.clip(across / np.maximum(half, 1e-6), -1.0, 1.0)


def draw_polylines(shape: Tuple[int, int], polylines: Iterable[np.ndarray], width: int) -> np.ndarray:
    """Rasterise open (N, 2) x, y polylines with ``width`` px thick round-joined
    lines; returns a boolean (H, W) mask."""
    img = Image.new("L", (int(shape[1]), int(shape[0])), 0)
    draw = ImageDraw.Draw(img)
    polylines = [np.asarray(line, float).reshape(-1, 2) for line in polylines]
    for line in polylines:
        pts = [(float(x), float(y)) for x, y in np.asarray(line, float).reshape(-1, 2)]
        if len(pts) == 1:
            pts = pts * 2
        if len(pts) >= 2:
            draw.line(pts, fill=255, width=int(width), joint="curve")
            r = (width - 1) / 2.0
            for x, y in (pts[0], pts[-1]):  # round caps, PIL draws flat ends
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    out = np.asarray(img) > 0
    # PIL can leave the last pixel or two of a thin line undrawn; the curve's
    # own (rounded) points are always part of its mask.
    for line in polylines:
        ix, iy = np.rint(line[:, 0]).astype(int), np.rint(line[:, 1]).astype(int)
        ok = (ix >= 0) & (iy >= 0) & (ix < out.shape[1]) & (iy < out.shape[0])
        out[iy[ok], ix[ok]] = True
    return out


def split_inside(points: np.ndarray, keep: np.ndarray, min_points: int = 2) -> list:
    """Split an (N, 2) polyline into the runs of consecutive points where
    ``keep`` is True; runs shorter than ``min_points`` are dropped."""
    runs, start = [], None
    for i, k in enumerate(np.append(keep, False)):
        if k and start is None:
            start = i
        elif not k and start is not None:
            if i - start >= min_points:
                runs.append(points[start:i].copy())
            start = None
    return runs
