"""Drawing open polylines into index masks (no OpenCV).

A thick polyline is the union of capsules (all pixels within ``thickness / 2``
of a segment), which equals dilating the 1-px line with a disk of diameter
``thickness``; each capsule is evaluated only on its segment's bounding box,
so the cost does not depend on the image size.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
from skimage.draw import line

from . import LIGAMENT, RIDGE, SILHOUETTE

# Later classes overwrite earlier ones where curves cross: the rarest and
# thinnest landmark (ligament) stays visible.
DRAW_ORDER = (SILHOUETTE, RIDGE, LIGAMENT)

Polyline = np.ndarray  # (N, 2) float, columns x, y (image coordinates, pixel centres)
Curves = Mapping[int, Sequence[Polyline]]


def draw_polyline(mask: np.ndarray, points_xy: np.ndarray, value: int, thickness: float = 1.0) -> None:
    """Draw an open polyline in place. ``thickness`` <= 1 draws 8-connected 1-px lines."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return
    h, w = mask.shape[:2]
    if thickness <= 1.0:
        r = np.rint(pts[:, 1]).astype(np.int64)
        c = np.rint(pts[:, 0]).astype(np.int64)
        if len(pts) == 1:
            rr, cc = r, c
        else:
            segs = [line(r[i], c[i], r[i + 1], c[i + 1]) for i in range(len(pts) - 1)]
            rr = np.concatenate([s[0] for s in segs])
            cc = np.concatenate([s[1] for s in segs])
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        mask[rr[ok], cc[ok]] = value
        return
    radius = thickness / 2.0
    r2 = radius * radius
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    # Each segment: pixels of its bounding box (grown by the radius) whose
    # distance to the segment is <= radius, i.e. a capsule. (A batched version
    # with fixed windows was slower: the windows waste more area than the
    # per-segment loop costs.)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        c0 = max(int(np.floor(min(x0, x1) - radius)), 0)
        c1 = min(int(np.ceil(max(x0, x1) + radius)) + 1, w)
        r0 = max(int(np.floor(min(y0, y1) - radius)), 0)
        r1 = min(int(np.ceil(max(y0, y1) + radius)) + 1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        px = np.arange(c0, c1, dtype=np.float64)[None, :] - x0
        py = np.arange(r0, r1, dtype=np.float64)[:, None] - y0
        dx, dy = x1 - x0, y1 - y0
        ll = dx * dx + dy * dy
        t = np.clip((px * dx + py * dy) / ll, 0.0, 1.0) if ll > 0 else 0.0
        inside = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r2
        mask[r0:r1, c0:c1][inside] = value


def rasterize_curves(curves: Curves, shape: Tuple[int, int], thickness: float = 1.0,
                     dtype=np.uint8) -> np.ndarray:
    """Index mask of ``shape`` (H, W) with each class's polylines drawn."""
    mask = np.zeros(shape, dtype=dtype)
    for cls in DRAW_ORDER:
        for pts in curves.get(cls, ()):
            draw_polyline(mask, pts, cls, thickness)
    for cls in curves:
        if cls not in DRAW_ORDER:
            raise ValueError(f"unknown liver class {cls}")
    return mask


def scale_curves(curves: Curves, sx: float, sy: float) -> Dict[int, List[Polyline]]:
    """Map polylines between resolutions (pixel-centre convention:
    x' = (x + 0.5) * sx - 0.5)."""
    out: Dict[int, List[Polyline]] = {}
    for cls, plist in curves.items():
        out[cls] = [np.column_stack([(p[:, 0] + 0.5) * sx - 0.5, (p[:, 1] + 0.5) * sy - 0.5]) for p in
                    (np.asarray(q, dtype=np.float64).reshape(-1, 2) for q in plist)]
    return out


def iter_points(curves: Curves) -> Iterable[Tuple[int, int, np.ndarray]]:
    for cls in sorted(curves):
        for i, pts in enumerate(curves[cls]):
            yield cls, i, np.asarray(pts)
