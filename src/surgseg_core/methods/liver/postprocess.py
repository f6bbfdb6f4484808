"""Mask post-processing of the paper (sec. 3.1), each step a function with a
switch in :class:`PostprocessOptions`, applied in the paper's order:

1. camera culling: predictions outside the endoscope's field of view (FOV)
   become background. The FOV is fitted to the dark border (smoothed
   brightness on a 4x reduced image, threshold, largest component, holes
   filled; optionally a least-squares circle), not a per-pixel "<= 2" test;
2. ligament culling (rule ``"columns"``, the paper's "above/below both the
   ridge and the silhouette"): for a ligament pixel (x, y), let top_k(x) and
   bottom_k(x) be the smallest and largest row of class k (ridge, silhouette)
   in column x, linearly interpolated over columns where k has no pixel and
   held constant beyond its ends. The pixel is removed when it lies above both
   (y < min(top_r, top_s)) or below both (y > max(bottom_r, bottom_s)). "Both"
   needs both: when ridge or silhouette is missing from the frame nothing is
   removed (a lone ridge's own thin extent would cull almost everything). Rule ``"bbox"`` is the reference code's: keep
   only ligament pixels inside the bounding box of ridge + silhouette;
3. joining: components of one class closer than ``join_distance`` px are
   connected by a straight line between their nearest pixels (shortest gaps
   first, never closing a loop);
4. Zhang-Suen thinning (the result of
   ``skimage.morphology.skeletonize(method="zhang")``, computed on the pixel
   list by ``_fast.zhang_suen_points``), after filling enclosed holes up to
   ``max_hole_area`` px (each hole would become a skeleton loop);
5. Ramer-Douglas-Peucker simplification of the skeleton traced into ordered
   paths (spurs shorter than ``min_branch`` px pruned first, see
   ``skeleton_paths``);
6. outputs at the ORIGINAL image resolution: the polylines are scaled (not
   the masks), then drawn 1 px thin and at ``out_thickness``.

Steps 3-5 work per class on the cropped bounding box of that class, and no
step computes a full-image distance transform; labelling, the closest pairs
for joining, hole detection and filling, thinning and the skeleton graph work
from the pixel lists rather than scanning the box, in the compiled kernels
(``_kernels.pyx``) when they are built and in numpy otherwise (same results;
benchmarks/liver_postprocess.py has the per-frame cost of both). OpenCV draws
the output maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

from ...errors import ConfigError
from . import LANDMARK_CLASSES, LIGAMENT, RIDGE, SILHOUETTE
from . import _fast
from ._fast import euler_number8, flat_view, nonzero2d, zhang_suen, zhang_suen_points
from .rasterize import rasterize_curves, scale_curves
from .skeleton_paths import trace_label_skeleton

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class PostprocessOptions:
    camera_culling: bool = True
    fov_threshold: float = 20.0       # 0-255 brightness below which the border is "dark"
    fov_shape: str = "mask"           # "mask" or "circle"
    ligament_culling: Optional[str] = "columns"  # "columns", "bbox" or None
    join: bool = True
    join_distance: float = 15.0       # px at the network resolution
    skeletonize: bool = True
    simplify: bool = True
    rdp_epsilon: float = 1.0          # px at the network resolution
    min_path_pixels: int = 2          # drop isolated skeleton specks
    min_branch: int = 8               # prune skeleton spurs shorter than this (px at the network resolution)
    max_hole_area: int = 64           # fill enclosed holes up to this size before thinning (0: off)
    out_thickness: Optional[float] = 12.0  # px at the original resolution; None: no dilated map

    def __post_init__(self) -> None:
        if self.ligament_culling not in (None, "columns", "bbox"):
            raise ConfigError(f"ligament_culling must be 'columns', 'bbox' or None, got {self.ligament_culling!r}")
        if self.fov_shape not in ("mask", "circle"):
            raise ConfigError(f"fov_shape must be 'mask' or 'circle', got {self.fov_shape!r}")
        if self.join_distance < 0 or self.rdp_epsilon < 0:
            raise ConfigError("join_distance and rdp_epsilon must be >= 0")

    def to_dict(self) -> dict:
        return dict(self.__dict__)  # all fields are scalars (dataclasses.asdict: ~60 us per frame)


@dataclass
class LandmarkResult:
    """Post-processed landmarks of one frame at the original resolution."""

    polylines: Dict[int, List[np.ndarray]]  # class -> [(N, 2) x, y]
    thin: np.ndarray                        # (H, W) uint8, 1-px curves
    dilated: Optional[np.ndarray]           # (H, W) uint8 at out_thickness
    fov: Optional[np.ndarray] = None        # FOV mask at the network resolution
    info: dict = field(default_factory=dict)


# 1. camera culling -----------------------------------------------------------------

def _fov_small(image: np.ndarray, threshold: float = 20.0, reduce: int = 4, shape: str = "mask") -> Optional[np.ndarray]:
    """FOV mask at 1/``reduce`` of the image size, or None when the frame has
    no usable dark border (then nothing is culled)."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    hh, ww = h // reduce, w // reduce
    if hh < 4 or ww < 4:
        return None
    # every reduce-th pixel, then a 3x3 mean: cheaper than block means on the
    # full frame and as good for finding a border that is tens of pixels wide
    sub = img[reduce // 2: hh * reduce: reduce, reduce // 2: ww * reduce: reduce]
    if sub.ndim == 3:
        # channel maximum by pairwise np.maximum: ndarray.max(axis=2) on this
        # strided view takes ~0.2 ms, the pairwise maximum ~20 us (same values)
        bright = sub[..., 0]
        for k in range(1, sub.shape[2]):
            bright = np.maximum(bright, sub[..., k])
    else:
        bright = sub
    small = ndi.uniform_filter(bright.astype(np.float32), 3)
    cand = small > threshold
    lab, n = ndi.label(cand)
    if n == 0:
        return None
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        cand = lab == sizes.argmax()
    fov = _fill_holes(cand)
    frac = fov.mean()
    if frac > 0.995 or frac < 0.05:
        return None
    if shape == "circle":
        fov = _fit_circle_mask(fov)
    return fov


def _index_map(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-neighbour source index of each of ``n_out`` pixels (pixel centres)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def estimate_fov(image: np.ndarray, threshold: float = 20.0, reduce: int = 4, shape: str = "mask",
                 out_shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Boolean field-of-view mask of an endoscope frame (H, W, 3) uint8.

    Brightness is the per-pixel channel maximum (a dark red tissue shadow is
    still bright in red), sampled every ``reduce`` pixels and smoothed; pixels
    above ``threshold`` (0-255) are FOV candidates, of which the largest
    component with its holes filled is the FOV (dark tissue inside the view is
    a hole, the border is not). ``shape="circle"`` replaces it by the
    least-squares circle through its outline. A frame without a dark border
    (or a nearly black one) gives an all-True mask, so nothing is dropped by
    mistake. The mask is returned at ``out_shape`` (H, W), default the image's.
    """
    out_shape = tuple(out_shape or np.asarray(image).shape[:2])
    small = _fov_small(image, threshold, reduce, shape)
    if small is None:
        return np.ones(out_shape, bool)
    return small[_index_map(out_shape[0], small.shape[0])[:, None], _index_map(out_shape[1], small.shape[1])[None, :]]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes = background components that do not touch the image border (one
    labelling pass; ndi.binary_fill_holes iterates dilations)."""
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    outside = np.zeros(n + 1, bool)
    outside[border] = True
    outside[0] = False
    return ~outside[bg]


def _fit_circle_mask(fov: np.ndarray) -> np.ndarray:
    edge = fov & ~ndi.binary_erosion(fov)
    # points on the image border are where the frame cuts the circle: not circle points
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = False
    y, x = nonzero2d(edge)
    if len(x) < 10:
        return fov
    # Kasa fit: x^2 + y^2 + D x + E y + F = 0
    a = np.column_stack([x, y, np.ones_like(x)]).astype(np.float64)
    b = -(x.astype(np.float64) ** 2 + y.astype(np.float64) ** 2)
    (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -d / 2, -e / 2
    r2 = cx * cx + cy * cy - f
    if r2 <= 0:
        return fov
    yy, xx = np.ogrid[: fov.shape[0], : fov.shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r2


def _points(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    ys, xs = nonzero2d(labels)
    return ys, xs, labels[ys, xs]


def _to_labels(shape, ys, xs, vals, dtype=np.uint8) -> np.ndarray:
    out = np.zeros(shape, dtype)
    out[ys, xs] = vals
    return out


def cull_outside_fov(labels: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Predictions outside the FOV mask (same shape as ``labels``) become background."""
    if fov.shape != labels.shape:
        raise ConfigError(f"FOV mask shape {fov.shape} differs from the label map {labels.shape}")
    out = labels.copy()
    out[~fov] = 0
    return out


# 2. ligament culling ---------------------------------------------------------------

def _column_extents(ys: np.ndarray, xs: np.ndarray, width: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Per-column (top, bottom) rows of the pixels (ys, xs), linearly
    interpolated over columns without pixels, constant beyond the ends."""
    if len(xs) == 0:
        return None
    big = np.iinfo(np.int64).max
    top = np.full(width, big, dtype=np.int64)
    bottom = np.full(width, -1, dtype=np.int64)
    np.minimum.at(top, xs, ys)
    np.maximum.at(bottom, xs, ys)
    cols = np.flatnonzero(bottom >= 0)
    x = np.arange(width)
    return np.interp(x, cols, top[cols]), np.interp(x, cols, bottom[cols])


def ligament_keep(ys: np.ndarray, xs: np.ndarray, vals: np.ndarray, width: int,
                  rule: Optional[str] = "columns") -> np.ndarray:
    """Which of the labelled pixels (ys, xs, vals) survive ligament culling."""
    keep = np.ones(len(vals), bool)
    is_lig = vals == LIGAMENT
    if rule is None or not is_lig.any():
        return keep
    is_ref = (vals == RIDGE) | (vals == SILHOUETTE)
    if not is_ref.any():
        return keep
    ly, lx = ys[is_lig], xs[is_lig]
    if rule == "bbox":
        ry, rx = ys[is_ref], xs[is_ref]
        inside = (ly >= ry.min()) & (ly <= ry.max()) & (lx >= rx.min()) & (lx <= rx.max())
        keep[np.flatnonzero(is_lig)[~inside]] = False
        return keep
    if rule != "columns":
        raise ConfigError(f"unknown ligament culling rule {rule!r}")
    extents = [_column_extents(ys[vals == k], xs[vals == k], width) for k in (RIDGE, SILHOUETTE)]
    if any(e is None for e in extents):
        return keep
    top = np.minimum.reduce([e[0] for e in extents])
    bottom = np.maximum.reduce([e[1] for e in extents])
    drop = (ly < top[lx]) | (ly > bottom[lx])
    keep[np.flatnonzero(is_lig)[drop]] = False
    return keep


def cull_ligament(labels: np.ndarray, rule: Optional[str] = "columns") -> np.ndarray:
    """Remove ligament pixels above or below both the ridge and the silhouette
    (see the module docstring for the exact ``"columns"`` and ``"bbox"`` rules)."""
    if rule not in (None, "columns", "bbox"):
        raise ConfigError(f"unknown ligament culling rule {rule!r}")
    ys, xs, vals = _points(labels)
    keep = ligament_keep(ys, xs, vals, labels.shape[1], rule)
    if keep.all():
        return labels
    out = labels.copy()
    out[ys[~keep], xs[~keep]] = 0
    return out


# 3. joining ------------------------------------------------------------------------

def _nearest_pair(a: np.ndarray, b: np.ndarray) -> Tuple[float, int, int]:
    """Closest points between two non-empty (N, 2) point sets."""
    if len(a) * len(b) <= 20000:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        ia, ib = divmod(int(d2.argmin()), len(b))
        return float(np.sqrt(d2[ia, ib])), ia, ib
    from scipy.spatial import cKDTree

    dist, ib = cKDTree(b).query(a)
    ia = int(dist.argmin())
    return float(dist[ia]), ia, int(ib[ia])


def _near_box(pts: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """Points of ``pts`` within ``margin`` of the box [r0, r1, c0, c1]: only
    those can be within ``margin`` of anything inside the box."""
    m = ((pts[:, 0] >= box[0] - margin) & (pts[:, 0] <= box[1] + margin)
         & (pts[:, 1] >= box[2] - margin) & (pts[:, 1] <= box[3] + margin))
    return pts[m]


def join_fragments(mask: np.ndarray, max_distance: float = 15.0) -> np.ndarray:
    """Connect components of a binary mask closer than ``max_distance`` with
    1-px lines between their nearest pixels (Kruskal order: shortest first,
    only joining components not yet connected). Works on the mask's bounding box."""
    return _join_fragments(mask, max_distance)[0]


def _component_links_numpy(mask: np.ndarray, max_distance: float):
    """(number of 8-connected components, [(distance, i, j, pixel of i, pixel
    of j)] for the pairs closer than ``max_distance``), numpy version of
    :func:`_component_links_compiled`."""
    lab, n = ndi.label(mask, structure=_EIGHT)
    if n < 2:
        return n, []
    ys, xs = nonzero2d(mask)
    comp = lab[ys, xs] - 1
    # boxes and outlines from the pixel list (ndi.find_objects and a mask per
    # component would each scan the box again)
    order = np.argsort(comp, kind="stable")  # pixels grouped by component, raster order within
    ys, xs, comp = ys[order], xs[order], comp[order]
    starts = np.flatnonzero(np.diff(comp, prepend=-1))
    boxes = np.column_stack([np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts),
                             np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)])
    # outline pixels (a 4-neighbour is background): the nearest points between
    # two blobs lie on their outlines, which keeps the pairwise search small
    h, w = mask.shape
    if ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1:  # a crop with a margin
        m, yy, xx = np.asarray(mask, bool), ys, xs
    else:
        m, yy, xx = np.pad(np.asarray(mask, bool), 1), ys + 1, xs + 1
    inner = m[yy - 1, xx] & m[yy + 1, xx] & m[yy, xx - 1] & m[yy, xx + 1]
    bounds = np.append(starts, len(ys))
    pts = {}
    edges = []
    for i in range(n):
        for j in range(i + 1, n):
            # gap between boxes: a lower bound of the component distance
            gy = max(0, boxes[j, 0] - boxes[i, 1], boxes[i, 0] - boxes[j, 1])
            gx = max(0, boxes[j, 2] - boxes[i, 3], boxes[i, 2] - boxes[j, 3])
            if gy * gy + gx * gx > max_distance * max_distance:
                continue
            for k in (i, j):
                if k not in pts:
                    sl = slice(bounds[k], bounds[k + 1])
                    on = ~inner[sl]
                    pts[k] = np.column_stack([ys[sl][on], xs[sl][on]])
            a = _near_box(pts[i], boxes[j], max_distance)
            b = _near_box(pts[j], boxes[i], max_distance)
            if len(a) == 0 or len(b) == 0:
                continue
            d, ia, ib = _nearest_pair(a, b)
            if d <= max_distance:
                edges.append((d, i, j, a[ia], b[ib]))
    return n, edges


def _component_links_compiled(mask: np.ndarray, max_distance: float):
    """:func:`_component_links_numpy` with the compiled kernels (labelling
    and the pairwise search over outline pixels in C)."""
    kernels = _fast.kernels
    flat, w, pad = flat_view(mask)
    pts = np.flatnonzero(flat)
    comp, n = kernels.label8(flat.view(np.uint8), pts, w)
    if n < 2:
        return n, []
    order = np.argsort(comp, kind="stable")  # pixels grouped by component, raster order within
    pts, comp = pts[order], comp[order]
    outline = ~(flat[pts - 1] & flat[pts + 1] & flat[pts - w] & flat[pts + w])
    d, i, j, pa, pb = kernels.component_links(pts, outline.view(np.uint8), comp, n, w, float(max_distance))
    ra, ca = np.divmod(np.asarray(pa, np.int64), w)
    rb, cb = np.divmod(np.asarray(pb, np.int64), w)
    return n, [(d[k], i[k], j[k], (ra[k] - pad, ca[k] - pad), (rb[k] - pad, cb[k] - pad)) for k in range(len(d))]


def _join_fragments(mask: np.ndarray, max_distance: float) -> Tuple[np.ndarray, int]:
    """:func:`join_fragments` and the number of 8-connected components left."""
    from skimage.draw import line

    if _fast.kernels is not None:
        n, edges = _component_links_compiled(mask, max_distance)
    else:
        n, edges = _component_links_numpy(mask, max_distance)
    if not edges:
        return mask, n
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    out = mask.copy()
    left = n
    for d, i, j, pa, pb in sorted(edges, key=lambda e: e[0]):
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        parent[ri] = rj
        left -= 1
        rr, cc = line(int(pa[0]), int(pa[1]), int(pb[0]), int(pb[1]))
        out[rr, cc] = True
    return out, left


# 4.-5. thinning, tracing, simplification -------------------------------------------

def fill_small_holes(mask: np.ndarray, max_area: int = 64, n_components: Optional[int] = None) -> np.ndarray:
    """Fill enclosed background pockets up to ``max_area`` px (e.g. where a
    joining line closes a notch). Thinning turns every hole into a loop, and
    loops break a curve into many short paths; landmarks are open curves.

    ``n_components``: an upper bound of the number of 8-connected components
    of ``mask`` when the caller knows it (joining does); then holes = components
    - Euler number is checked first and the background labelling (a scan of
    the whole box) runs only when there may be a hole."""
    if max_area <= 0:
        return mask
    kernels = _fast.kernels
    if kernels is not None:  # one scan for the pixels serves the Euler check and the fill
        flat, w, pad = flat_view(mask)
        pts = np.flatnonzero(flat)
        if n_components is not None and n_components - kernels.euler8(flat.view(np.uint8), pts, w) <= 0:
            return mask
        if pad == 0:
            flat = flat.copy()
        if not kernels.fill_small_holes(flat.view(np.uint8), pts, w, int(max_area)):
            return mask
        return flat.reshape(-1, w)[pad:pad + mask.shape[0], pad:pad + mask.shape[1]]
    if n_components is not None and n_components - euler_number8(mask) <= 0:
        return mask
    bg, n = ndi.label(~mask)
    if n < 2:
        return mask
    sizes = np.bincount(bg.ravel())
    small = sizes <= max_area
    small[0] = False
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    small[border] = False
    return mask | small[bg] if small.any() else mask


def skeletonize_crops(crops: List[np.ndarray], overwrite: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of the Zhang-Suen skeleton of each mask. In numpy, all are
    thinned in one call on the masks stacked with a background row between
    them (the thinning is local, so they do not interact; one call pays the
    per-pass numpy overhead once instead of once per class). ``overwrite``:
    boolean masks with a background margin may be thinned in place."""
    if len(crops) == 0:
        return []
    if len(crops) == 1 or _fast.kernels is not None:
        return [zhang_suen_points(c, overwrite=overwrite) for c in crops]
    width = max(c.shape[1] for c in crops)
    starts = np.cumsum([0] + [c.shape[0] + 1 for c in crops])
    stack = np.zeros((int(starts[-1]), width), bool)
    for c, s in zip(crops, starts):
        stack[s:s + c.shape[0], :c.shape[1]] = c
    r, c = zhang_suen_points(stack, overwrite=True)
    cut = np.searchsorted(r, starts[1:-1])  # rows are sorted (row-major)
    return [(rr - s, cc) for rr, cc, s in zip(np.split(r, cut), np.split(c, cut), starts)]


def skeletonize_mask(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning; ``_fast.zhang_suen`` gives skimage's
    ``skeletonize(mask, method="zhang")`` pixel for pixel but visits only the
    foreground (tests/test_liver_postprocess.py compares the two)."""
    return zhang_suen(mask)


def rdp(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer-Douglas-Peucker as the paper states it: keep the point farthest
    from the straight line through the first and last points if its
    perpendicular distance exceeds ``epsilon``, and recurse on both halves.
    (skimage.measure.approximate_polygon measures to the segment instead, and
    its Python loop cost ~0.5 ms per path; this loop does ~6 numpy calls per
    split.) A closed path (first == last point) measures to that point."""
    pts = np.ascontiguousarray(points, dtype=np.float64)
    n = len(pts)
    if epsilon <= 0 or n < 3:
        return pts
    if _fast.kernels is not None:  # the same loop and arithmetic in C
        return pts[_fast.kernels.rdp_keep(pts.reshape(n, 2), float(epsilon))]
    keep = np.zeros(n, bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        rel = pts[a + 1:b] - pts[a]
        dy, dx = pts[b] - pts[a]
        length = np.hypot(dx, dy)
        if length == 0:
            dist = np.hypot(rel[:, 0], rel[:, 1])
        else:
            dist = np.abs(rel[:, 0] * dx - rel[:, 1] * dy) / length
        i = int(dist.argmax())
        if dist[i] > epsilon:
            m = a + 1 + i
            keep[m] = True
            stack.append((a, m))
            stack.append((m, b))
    return pts[keep]


def simplify_path(path: np.ndarray, epsilon: float) -> np.ndarray:
    """RDP of an 8-connected pixel path. Pixels inside straight runs are
    dropped first: the distance to a line is convex along a straight run, so
    the first farthest point RDP looks for is always a run end and the result
    is the same at a fraction of the cost (tests compare it with :func:`rdp`).
    (OpenCV's approxPolyDP is not used: it adds a clean-up pass that drops
    further points near the lines, which the paper's RDP does not.)"""
    if epsilon <= 0 or len(path) < 3:
        return np.asarray(path, dtype=np.float64)
    step = np.diff(path, axis=0)
    turn = np.any(step[1:] != step[:-1], axis=1)
    keep = np.concatenate([[True], turn, [True]])
    return rdp(path[keep], epsilon)


def _crop_from_points(ys: np.ndarray, xs: np.ndarray, pad: int = 2):
    y0, x0 = int(ys.min()) - pad, int(xs.min()) - pad
    crop = np.zeros((int(ys.max()) - y0 + pad + 1, int(xs.max()) - x0 + pad + 1), bool)
    crop[ys - y0, xs - x0] = True
    return crop, y0, x0


def _polylines_from_points(ys, xs, vals, options: PostprocessOptions) -> Dict[int, List[np.ndarray]]:
    out: Dict[int, List[np.ndarray]] = {cls: [] for cls in LANDMARK_CLASSES}
    if len(vals) == 0:
        return out
    # one canvas for the skeletons of all classes: the union bounding box
    pad = 2
    oy, ox = int(ys.min()) - pad, int(xs.min()) - pad
    canvas = np.zeros((int(ys.max()) - oy + pad + 1, int(xs.max()) - ox + pad + 1), np.uint8)
    crops = []
    for cls in LANDMARK_CLASSES:
        sel = vals == cls
        if not sel.any():
            continue
        crop, y0, x0 = _crop_from_points(ys[sel], xs[sel], pad)
        n_comp = None
        if options.join:
            crop, n_comp = _join_fragments(crop, options.join_distance)
        crops.append((cls, fill_small_holes(crop, options.max_hole_area, n_comp), y0, x0))
    if options.skeletonize:
        thinned = skeletonize_crops([c[1] for c in crops], overwrite=True)
    else:
        thinned = [nonzero2d(c[1]) for c in crops]
    for (cls, _, y0, x0), (ry, rx) in zip(crops, thinned):
        canvas[ry + (y0 - oy), rx + (x0 - ox)] = cls
    for cls, path in trace_label_skeleton(canvas, min_pixels=options.min_path_pixels,
                                                min_branch=options.min_branch):
        if options.simplify:
            path = simplify_path(path, options.rdp_epsilon)
        path = path + (oy, ox)
        out[cls].append(path[:, ::-1].astype(np.float64))  # (row, col) -> (x, y)
    return out


def landmark_polylines(labels: np.ndarray, options: Optional[PostprocessOptions] = None) -> Dict[int, List[np.ndarray]]:
    """Steps 3-5 (join, thin, trace + RDP) for every landmark class of a label
    map: {class: [(N, 2) x, y]} at the label map's resolution. Joining and
    thinning run per class on its bounding box; tracing runs once for all."""
    options = options or PostprocessOptions()
    return _polylines_from_points(*_points(np.asarray(labels)), options)


# the whole chain -------------------------------------------------------------------

def postprocess(labels: np.ndarray, image: Optional[np.ndarray] = None, *,
                out_shape: Optional[Tuple[int, int]] = None, options: Optional[PostprocessOptions] = None,
                fov: Optional[np.ndarray] = None) -> LandmarkResult:
    """Run the chain on a network-resolution label map (H, W).

    ``image``: the frame (any resolution) for the FOV estimate; ``fov``: a
    precomputed FOV mask at the label resolution (video: the endoscope's FOV
    does not move, estimate it once). ``out_shape``: (H, W) of the original
    frame; outputs are drawn there from scaled polylines.
    Without skeletonisation there are no polylines: the culled (and joined)
    masks are resized with nearest neighbour as both output maps.
    """
    options = options or PostprocessOptions()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ConfigError(f"expected a 2-D label map, got shape {labels.shape}")
    h, w = labels.shape
    out_shape = tuple(out_shape) if out_shape is not None else (h, w)
    ys, xs, vals = _points(labels)
    fov_small = None
    if options.camera_culling and len(vals):
        if fov is not None:
            if fov.shape != labels.shape:
                raise ConfigError(f"FOV mask shape {fov.shape} differs from the label map {labels.shape}")
            keep = fov[ys, xs]
        elif image is not None:
            fov_small = _fov_small(image, options.fov_threshold, shape=options.fov_shape)
            keep = None
            if fov_small is not None:
                keep = fov_small[_index_map(h, fov_small.shape[0])[ys], _index_map(w, fov_small.shape[1])[xs]]
        else:
            keep = None
        if keep is not None:
            ys, xs, vals = ys[keep], xs[keep], vals[keep]
    keep = ligament_keep(ys, xs, vals, w, options.ligament_culling)
    ys, xs, vals = ys[keep], xs[keep], vals[keep]
    info = {"options": options.to_dict()}
    if not options.skeletonize:
        from .data import resize_mask

        joined = np.zeros((h, w), np.uint8)
        for cls in LANDMARK_CLASSES:
            sel = vals == cls
            if not sel.any():
                continue
            crop, y0, x0 = _crop_from_points(ys[sel], xs[sel], 0)
            if options.join:
                crop = join_fragments(crop, options.join_distance)
            ry, rx = nonzero2d(crop)
            joined[ry + y0, rx + x0] = cls
        big = resize_mask(joined, (out_shape[1], out_shape[0]))
        return LandmarkResult({}, big, big if options.out_thickness else None, fov, info)
    polylines = scale_curves(_polylines_from_points(ys, xs, vals, options), out_shape[1] / w, out_shape[0] / h)
    thin = rasterize_curves(polylines, out_shape, 1.0)
    dilated = rasterize_curves(polylines, out_shape, options.out_thickness) if options.out_thickness else None
    if fov is None and fov_small is not None:
        info["fov_small"] = fov_small
    return LandmarkResult(polylines, thin, dilated, fov, info)
