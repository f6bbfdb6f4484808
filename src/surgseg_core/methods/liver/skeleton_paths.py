"""Ordered paths from a one-pixel skeleton.

scikit-image thins (Zhang-Suen) but has no skeleton-to-polyline tracing, and
``skan`` would be an extra dependency for ~60 lines, so this is hand-written on
scipy's sparse-graph routines (C speed, no per-pixel Python loop), or on the
compiled ``_kernels.skeleton_segments`` (a plain walk; same result) when built:

1. pixels are nodes; 4-neighbours are joined, diagonal neighbours only when
   neither shared 4-neighbour is set (this removes the little triangles of a
   8-connected skeleton so that degree reflects topology);
2. nodes of degree >= 3 are junctions; removing them leaves simple paths and
   cycles, all ordered by one depth-first walk (see below);
3. each path is extended at its ends to the junction pixels it touches so that
   branches still meet;
4. optionally, spurs shorter than ``min_branch`` pixels (thinning artefacts
   of thick masks) are dropped and the two paths then left at a junction are
   joined into one.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order

from . import _fast
from ._fast import flat_view, nonzero2d


def _edges(lab: np.ndarray, flat_idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-graph edges between equal non-zero labels, as node numbers
    (positions in ``flat_idx``, the sorted flat indices of the non-zero
    pixels). Groups in this order, each in raster order of its first pixel:
    right, down, down-right, down-left neighbours; a diagonal only where no
    4-connected detour of the same label exists. Looked up from the pixel list
    (searchsorted), not by comparing shifted copies of the whole image."""
    h, w = lab.shape
    # one zero row/column of margin so that p + offset never wraps into a neighbour row
    flat = np.zeros((h + 1) * (w + 1), lab.dtype)
    r, c = np.divmod(flat_idx, w)
    p = r * (w + 1) + c
    flat[p] = lab.ravel()[flat_idx]
    W = w + 1
    v = flat[p]
    src, dst = [], []

    def nodes(q, hit):
        return np.searchsorted(p, q[hit])

    for off in (1, W):
        q = p + off
        hit = flat[q] == v
        src.append(np.flatnonzero(hit)); dst.append(nodes(q, hit))
    # down-right: (r, c) - (r+1, c+1), unless (r, c+1) or (r+1, c) has the label
    q = p + W + 1
    hit = (flat[q] == v) & (flat[p + 1] != v) & (flat[p + W] != v)
    src.append(np.flatnonzero(hit)); dst.append(nodes(q, hit))
    # down-left: (r, c) - (r+1, c-1), unless (r, c-1) or (r+1, c) has the label;
    # the image's raster order of this group follows the upper-right pixel, i.e. p
    q = p + W - 1
    hit = (flat[q] == v) & (flat[p - 1] != v) & (flat[p + W] != v)
    src.append(np.flatnonzero(hit)); dst.append(nodes(q, hit))
    return np.concatenate(src), np.concatenate(dst)


def trace_skeleton(skel: np.ndarray, min_pixels: int = 2, min_branch: int = 0) -> List[np.ndarray]:
    """Ordered paths (arrays of (row, col)) of a boolean skeleton image.
    Paths with fewer than ``min_pixels`` pixels are dropped; closed loops
    repeat their first pixel at the end."""
    return [p for _, p in trace_label_skeleton(np.asarray(skel, dtype=np.uint8), min_pixels, min_branch)]


def trace_label_skeleton(lab: np.ndarray, min_pixels: int = 2, min_branch: int = 0) -> List[Tuple[int, np.ndarray]]:
    """Like :func:`trace_skeleton` for several classes at once: ``lab`` holds
    one-pixel skeletons labelled by class (0 background); pixels of different
    classes are never connected. Returns ``[(class, path), ...]`` (one graph
    for all classes keeps the fixed cost of the sparse routines to one call)."""
    lab = np.asarray(lab)
    if _fast.kernels is not None and lab.dtype in (np.uint8, np.bool_):  # other dtypes: numpy (same result)
        flat, w, pad = flat_view(lab, labels=True)
        pts = np.flatnonzero(flat)
        if len(pts) == 0:
            return []
        order, bounds, is_end, junction_of, cluster = _fast.kernels.skeleton_segments(flat.view(np.uint8), pts, w)
        rows, cols = np.divmod(pts, w)
        rows, cols = rows - pad, cols - pad
        node_class = flat[pts]
        blocks = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        rows, cols = nonzero2d(lab)
        if len(rows) == 0:
            return []
        blocks, is_end, junction_of, cluster = _segments(lab, rows, cols)
        node_class = lab[rows, cols]
    raw = []  # [class, node list, junction cluster at start or -1, at end or -1, closed]
    for block in blocks:
        block = block.tolist()
        if not is_end[block[0]] and len(block) > 2:
            raw.append([int(node_class[block[0]]), block + [block[0]], -1, -1, True])
            continue
        first, last = block[0], block[-1]
        j0 = j1 = -1
        if junction_of[last] >= 0:
            block.append(int(junction_of[last]))
            j1 = int(cluster[block[-1]])
        if junction_of[first] >= 0:
            block.insert(0, int(junction_of[first]))
            j0 = int(cluster[block[0]])
        raw.append([int(node_class[block[0]]), block, j0, j1, False])
    raw = _prune_and_merge(raw, min_branch)
    return [(cls, np.column_stack([rows[block], cols[block]])) for cls, block, _, _, _ in raw
            if len(block) >= min_pixels]


def _segments(lab: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """numpy/scipy version of ``_kernels.skeleton_segments`` (same results):
    (segments as arrays of pixel numbers, is-end flags, first junction
    neighbour of each pixel or -1, junction cluster of each pixel)."""
    n = len(rows)
    src, dst = _edges(lab, rows * lab.shape[1] + cols)
    degree = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    junction = degree >= 3
    keep = ~junction[src] & ~junction[dst]
    s, d = src[keep], dst[keep]
    seg = coo_matrix((np.ones(len(s), np.int8), (s, d)), shape=(n, n)).tocsr()
    seg_degree = np.bincount(s, minlength=n) + np.bincount(d, minlength=n)
    n_comp, comp = connected_components(seg, directed=False)  # junctions are singletons
    # the first junction neighbour of each pixel, in the order of the edge list
    junction_of = np.full(n, -1, dtype=np.int64)
    jmask = junction[src] ^ junction[dst]
    for a, b in zip(src[jmask].tolist(), dst[jmask].tolist()):
        if junction[a]:
            a, b = b, a
        if junction_of[a] < 0:
            junction_of[a] = b
    # Order every path with ONE depth-first walk: a virtual node n is linked to
    # one end of each path (any pixel of a loop); DFS finishes a path before
    # starting the next, and on a simple path its visiting order is the path.
    starts = np.full(n_comp, -1, dtype=np.int64)
    is_end = (seg_degree <= 1) & ~junction
    end_nodes = np.nonzero(is_end)[0]
    starts[comp[end_nodes][::-1]] = end_nodes[::-1]  # one end per component
    loop_comps = np.nonzero(starts < 0)[0]
    if len(loop_comps):
        any_node = np.full(n_comp, -1, dtype=np.int64)
        nodes = np.nonzero(~junction)[0]
        any_node[comp[nodes][::-1]] = nodes[::-1]
        starts[loop_comps] = any_node[loop_comps]
    comp_is_junction = np.zeros(n_comp, bool)
    comp_is_junction[comp[junction]] = True
    starts = starts[(starts >= 0) & ~comp_is_junction]
    # junction clusters (touching junction pixels are one branch point)
    jj = junction[src] & junction[dst]
    if jj.any():
        jgraph = coo_matrix((np.ones(int(jj.sum()), np.int8), (src[jj], dst[jj])), shape=(n, n))
        _, cluster = connected_components(jgraph, directed=False)
    else:
        cluster = np.arange(n)
    if len(starts) == 0:
        return [], is_end, junction_of, cluster
    vs = np.concatenate([s, np.full(len(starts), n)])
    vd = np.concatenate([d, starts])
    graph = coo_matrix((np.ones(len(vs), np.int8), (vs, vd)), shape=(n + 1, n + 1)).tocsr()
    order = depth_first_order(graph, n, directed=False, return_predecessors=False)[1:]
    cuts = np.nonzero(np.diff(comp[order]))[0] + 1
    return np.split(order, cuts), is_end, junction_of, cluster


def _prune_and_merge(raw: list, min_branch: int) -> list:
    """Drop spurs (a free end, a junction end, fewer than ``min_branch``
    pixels), then join the two paths left at any junction with exactly two
    path ends, so that a curve with a thinning artefact stays one polyline."""
    if min_branch > 0:
        raw = [p for p in raw if not ((p[2] >= 0) != (p[3] >= 0) and len(p[1]) < min_branch)]
    changed = True
    while changed:
        changed = False
        ends: dict = {}
        for k, p in enumerate(raw):
            if p[4]:
                continue
            for side, j in ((0, p[2]), (1, p[3])):
                if j >= 0:
                    ends.setdefault((p[0], j), []).append((k, side))
        for (cls, j), members in ends.items():
            if len(members) != 2:
                continue
            (a, sa), (b, sb) = members
            pa, pb = raw[a], raw[b]
            if a == b:  # both ends of one path meet: a loop
                pa[2] = pa[3] = -1
                pa[4] = True
                changed = True
                break
            # orient: pa ends at j, pb starts at j
            na = pa[1] if sa == 1 else pa[1][::-1]
            ja = pa[2] if sa == 1 else pa[3]
            nb = pb[1] if sb == 0 else pb[1][::-1]
            jb = pb[3] if sb == 0 else pb[2]
            if na[-1] == nb[0]:
                nb = nb[1:]
            raw[a] = [cls, na + nb, ja, jb, False]
            del raw[b]
            changed = True
            break
    return raw
