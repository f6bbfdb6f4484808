# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the liver post-processing hot path.

Why hand-written: a frame's landmarks are a few thousand pixels scattered over
a 416 x 320 map. Library routines (scipy.ndimage.label, skimage's Zhang-Suen,
OpenCV's connected components) scan every pixel of the image, ~0.1-0.4 ms per
call, and the pixel-list versions in numpy (``_fast.py``, ``skeleton_paths.py``)
pay numpy's per-call overhead a few hundred times per frame. These loops visit
only the foreground pixels. Each has a numpy twin that gives the same result
(the fallback when this extension is not built; the tests compare the two).

Every function takes a C-contiguous uint8 image raveled to 1-D (``flat``), its
row length ``w``, and the sorted flat indices ``pts`` of its non-zero pixels.
The image must have a background margin of at least one pixel on every side,
so that ``p + offset`` of a foreground pixel never leaves the row or the array.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.math cimport fabs, hypot, sqrt
from libc.stdlib cimport calloc, free, malloc


cdef inline int32_t _find(int32_t* parent, int32_t a) noexcept nogil:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


cdef inline void _union(int32_t* parent, int32_t a, int32_t b) noexcept nogil:
    # the smaller root wins: a component's root is its first pixel in raster order
    a = _find(parent, a)
    b = _find(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


cdef int _check(Py_ssize_t size, const int64_t[::1] pts, Py_ssize_t w) except -1:
    """Refuse inputs that would make the loops read outside the image (a
    crash would take napari and the user's unsaved work with it): every pixel
    must lie inside the image, off its outermost frame."""
    cdef Py_ssize_t i, h
    cdef int64_t r, c
    if w < 3 or size % w:
        raise ValueError(f"row length {w} does not divide the image size {size}")
    h = size // w
    for i in range(pts.shape[0]):
        if pts[i] < 0 or pts[i] >= size:
            raise ValueError(f"pixel index {pts[i]} outside the image")
        r = pts[i] // w
        c = pts[i] - r * w
        if r == 0 or r == h - 1 or c == 0 or c == w - 1:
            raise ValueError("a foreground pixel lies on the image's outermost frame: pad the image by 1 px")
    return 0


def zhang_suen(uint8_t[::1] flat, const int64_t[::1] pts, Py_ssize_t w, const uint8_t[::1] lut):
    """Zhang-Suen thinning in place on ``flat`` (0/1 values). ``lut``: the
    256-entry table of ``_fast._ZS_LUT`` (bit 0: removable in the first
    sub-pass, bit 1: in the second), indexed by the neighbour code (bit 0 NW,
    1 N, 2 NE, 3 E, 4 SE, 5 S, 6 SW, 7 W). Each sub-pass decides on the image
    as it was when the sub-pass began, as skimage does. Returns the flat
    indices of the skeleton, sorted."""
    cdef Py_ssize_t n = pts.shape[0], i, k, m
    _check(flat.shape[0], pts, w)
    if lut.shape[0] < 256:
        raise ValueError("the lookup table needs 256 entries")
    out = np.array(pts, dtype=np.int64, copy=True)
    if n == 0:
        return out
    cdef int64_t[::1] buf = out
    cdef uint8_t* rm = <uint8_t*>malloc(n)
    if rm == NULL:
        raise MemoryError()
    cdef Py_ssize_t off[8]
    off[0] = -w - 1; off[1] = -w; off[2] = -w + 1; off[3] = 1
    off[4] = w + 1; off[5] = w; off[6] = w - 1; off[7] = -1
    cdef int code, bit
    cdef int64_t p
    cdef bint removed = True
    with nogil:
        while removed and n > 0:
            removed = False
            for bit in range(1, 3):
                for i in range(n):
                    p = buf[i]
                    code = 0
                    for k in range(8):
                        if flat[p + off[k]]:
                            code |= 1 << k
                    rm[i] = lut[code] & bit
                m = 0
                for i in range(n):
                    if rm[i]:
                        flat[buf[i]] = 0
                        removed = True
                    else:
                        buf[m] = buf[i]
                        m += 1
                n = m
    free(rm)
    return out[:n]


def label8(const uint8_t[::1] flat, const int64_t[::1] pts, Py_ssize_t w):
    """8-connected components of the pixels ``pts``: (labels int64 per
    pixel, numbered 0.. in raster order of each component's first pixel,
    number of components)."""
    cdef Py_ssize_t n = pts.shape[0], i, k, size = flat.shape[0]
    _check(size, pts, w)
    labels = np.zeros(n, dtype=np.int64)
    if n == 0:
        return labels, 0
    cdef int64_t[::1] lab = labels
    cdef int32_t* index = <int32_t*>calloc(size, sizeof(int32_t))  # flat index -> pixel + 1
    cdef int32_t* parent = <int32_t*>malloc(n * sizeof(int32_t))
    if index == NULL or parent == NULL:
        free(index)
        free(parent)
        raise MemoryError()
    cdef Py_ssize_t back[4]
    back[0] = -1; back[1] = -w - 1; back[2] = -w; back[3] = -w + 1  # neighbours earlier in raster order
    cdef int32_t j, root
    cdef int64_t count = 0
    with nogil:
        for i in range(n):
            index[pts[i]] = <int32_t>(i + 1)
            parent[i] = <int32_t>i
        for i in range(n):
            for k in range(4):
                j = index[pts[i] + back[k]] - 1
                if j >= 0:
                    _union(parent, <int32_t>i, j)
        for i in range(n):
            root = _find(parent, <int32_t>i)
            if root == i:
                lab[i] = count
                count += 1
            else:
                lab[i] = lab[root]
    free(index)
    free(parent)
    return labels, int(count)


def euler8(const uint8_t[::1] flat, const int64_t[::1] pts, Py_ssize_t w):
    """Euler number (components - holes; 8-connected foreground) from the
    2 x 2 windows around the pixels ``pts``: the sum of ``_fast._QUAD_WEIGHT``
    over the four windows holding each pixel, divided by 12."""
    cdef Py_ssize_t n = pts.shape[0], i, k
    cdef int64_t total = 0, t
    cdef int code
    cdef int64_t weight[16]
    for k in range(16):
        weight[k] = 0
    weight[1] = weight[2] = weight[4] = weight[8] = 3
    weight[7] = weight[11] = weight[13] = weight[14] = -1
    weight[6] = weight[9] = -3
    cdef Py_ssize_t corner[4]
    _check(flat.shape[0], pts, w)
    corner[0] = 0; corner[1] = -1; corner[2] = -w; corner[3] = -w - 1
    with nogil:
        for i in range(n):
            for k in range(4):
                t = pts[i] + corner[k]
                code = ((flat[t] != 0) | ((flat[t + 1] != 0) << 1)
                        | ((flat[t + w] != 0) << 2) | ((flat[t + w + 1] != 0) << 3))
                total += weight[code]
    return int(total // 12)


def skeleton_segments(const uint8_t[::1] flat, const int64_t[::1] pts, Py_ssize_t w):
    """The pixel graph of a labelled 1-px skeleton, cut at its junctions.

    Pixels are joined to 4-neighbours of the same label, and to diagonal
    neighbours of the same label when neither pixel they share a side with has
    that label. Junctions: degree >= 3. Returns, as ``skeleton_paths`` uses them:

    - ``order``, ``bounds``: the non-junction pixels, segment after segment
      (``order[bounds[b]:bounds[b + 1]]``), each walked from its first end in
      raster order (a loop: from its first pixel, towards its smaller
      neighbour), segments sorted by their first pixel;
    - ``is_end``: pixel with at most one non-junction neighbour, not a junction;
    - ``junction_of``: the first junction neighbour of each pixel in the
      order W, E, N, S, NW, SE, NE, SW (-1: none);
    - ``cluster``: a label shared by touching junction pixels.
    """
    cdef Py_ssize_t n = pts.shape[0], size = flat.shape[0], i, k, s, pos, nseg = 0
    _check(size, pts, w)
    order_a = np.empty(n, dtype=np.int64)
    bounds_a = np.zeros(n + 1, dtype=np.int64)
    is_end_a = np.zeros(n, dtype=np.uint8)
    junction_of_a = np.full(n, -1, dtype=np.int64)
    cluster_a = np.arange(n, dtype=np.int64)
    if n == 0:
        return order_a, bounds_a[:1], is_end_a, junction_of_a, cluster_a
    cdef int64_t[::1] order = order_a, bounds = bounds_a, junction_of = junction_of_a, cluster = cluster_a
    cdef uint8_t[::1] is_end = is_end_a
    cdef int32_t* index = <int32_t*>calloc(size, sizeof(int32_t))
    cdef int32_t* adj = <int32_t*>malloc(8 * n * sizeof(int32_t))
    cdef int32_t* parent = <int32_t*>malloc(n * sizeof(int32_t))
    cdef uint8_t* deg = <uint8_t*>calloc(n, 1)
    cdef uint8_t* seg_deg = <uint8_t*>calloc(n, 1)
    cdef uint8_t* visited = <uint8_t*>calloc(n, 1)
    cdef int64_t* starts = <int64_t*>malloc(n * sizeof(int64_t))    # first pixel of each segment
    cdef int64_t* begins = <int64_t*>malloc((n + 1) * sizeof(int64_t))  # its offset in the walk buffer
    cdef int64_t* walked = <int64_t*>malloc(n * sizeof(int64_t))
    if (index == NULL or adj == NULL or parent == NULL or deg == NULL or seg_deg == NULL
            or visited == NULL or starts == NULL or begins == NULL or walked == NULL):
        free(index); free(adj); free(parent); free(deg); free(seg_deg); free(visited)
        free(starts); free(begins); free(walked)
        raise MemoryError()
    # neighbour order W, E, N, S, NW, SE, NE, SW; a diagonal's two side-sharing pixels
    cdef Py_ssize_t off[8]
    cdef Py_ssize_t side_a[8]
    cdef Py_ssize_t side_b[8]
    off[0] = -1; off[1] = 1; off[2] = -w; off[3] = w
    off[4] = -w - 1; off[5] = w + 1; off[6] = -w + 1; off[7] = w - 1
    side_a[4] = -1; side_b[4] = -w
    side_a[5] = 1; side_b[5] = w
    side_a[6] = 1; side_b[6] = -w
    side_a[7] = -1; side_b[7] = w
    cdef int64_t p, q
    cdef uint8_t v
    cdef int32_t j, cur, nxt
    cdef Py_ssize_t nwalk = 0, n_open = 0, a, b
    cdef int phase
    with nogil:
        for i in range(n):
            index[pts[i]] = <int32_t>(i + 1)
            parent[i] = <int32_t>i
        for i in range(n):
            p = pts[i]
            v = flat[p]
            for k in range(8):
                q = p + off[k]
                if flat[q] != v:
                    continue
                if k >= 4 and (flat[p + side_a[k]] == v or flat[p + side_b[k]] == v):
                    continue
                adj[8 * i + deg[i]] = index[q] - 1
                deg[i] += 1
        for i in range(n):
            if deg[i] >= 3:
                for k in range(deg[i]):
                    j = adj[8 * i + k]
                    if deg[j] >= 3:
                        _union(parent, <int32_t>i, j)
                continue
            for k in range(deg[i]):
                j = adj[8 * i + k]
                if deg[j] >= 3:
                    if junction_of[i] < 0:
                        junction_of[i] = j
                else:
                    seg_deg[i] += 1
            if seg_deg[i] <= 1:
                is_end[i] = 1
        for i in range(n):
            cluster[i] = _find(parent, <int32_t>i)
        # walk open segments from their first end, then loops from their first pixel
        for phase in range(2):
            if phase == 1:
                n_open = nseg
            for i in range(n):
                if visited[i] or deg[i] >= 3 or (phase == 0 and not is_end[i]):
                    continue
                starts[nseg] = i
                begins[nseg] = nwalk
                nseg += 1
                cur = <int32_t>i
                while cur >= 0:
                    visited[cur] = 1
                    walked[nwalk] = cur
                    nwalk += 1
                    nxt = -1
                    for k in range(deg[cur]):
                        j = adj[8 * cur + k]
                        if deg[j] < 3 and not visited[j] and (nxt < 0 or j < nxt):
                            nxt = j
                    cur = nxt
        begins[nseg] = nwalk
        # segments sorted by first pixel: merge the open ones and the loops (each sorted)
        a = 0
        b = n_open
        pos = 0
        for s in range(nseg):
            if a < n_open and (b >= nseg or starts[a] < starts[b]):
                k = a
                a += 1
            else:
                k = b
                b += 1
            bounds[s] = pos
            for i in range(begins[k], begins[k + 1]):
                order[pos] = walked[i]
                pos += 1
        bounds[nseg] = pos
    free(index); free(adj); free(parent); free(deg); free(seg_deg); free(visited)
    free(starts); free(begins); free(walked)
    return order_a[:pos], bounds_a[:nseg + 1], is_end_a, junction_of_a, cluster_a


def fill_small_holes(uint8_t[::1] flat, const int64_t[::1] pts, Py_ssize_t w, Py_ssize_t max_area):
    """Fill, in place, the background regions (4-connected) of at most
    ``max_area`` pixels that do not reach the outermost frame of the image.

    Each region is flooded from a background pixel next to the foreground
    with a budget of ``max_area`` pixels; a flood that exceeds it, reaches the
    frame or runs into such a region marks what it visited as outside, so no
    pixel is flooded twice and the work stays near the foreground (scipy's
    labelling of the background visits the whole image). Returns the number
    of pixels filled."""
    cdef Py_ssize_t n = pts.shape[0], size = flat.shape[0], h, i, k, top, count, filled = 0
    _check(size, pts, w)
    if n == 0 or max_area <= 0:
        return 0
    h = size // w
    cdef uint8_t* mark = <uint8_t*>calloc(size, 1)  # 1: in the current flood, 2: outside
    cdef int64_t* stack = <int64_t*>malloc((max_area + 1) * sizeof(int64_t))
    cdef int64_t* seen = <int64_t*>malloc((max_area + 1) * sizeof(int64_t))
    if mark == NULL or stack == NULL or seen == NULL:
        free(mark); free(stack); free(seen)
        raise MemoryError()
    cdef Py_ssize_t off[4]
    off[0] = -1; off[1] = 1; off[2] = -w; off[3] = w
    cdef int64_t p, q, s, r, c
    cdef int d, e
    cdef bint outside
    with nogil:
        for i in range(n):
            for d in range(4):
                s = pts[i] + off[d]
                if flat[s] or mark[s]:
                    continue
                # flood the background region of s
                top = 0
                count = 0
                outside = False
                stack[top] = s
                top += 1
                mark[s] = 1
                seen[count] = s
                count += 1
                while top > 0 and not outside:
                    top -= 1
                    p = stack[top]
                    r = p // w
                    c = p - r * w
                    if r == 0 or r == h - 1 or c == 0 or c == w - 1:
                        outside = True
                        break
                    for e in range(4):
                        q = p + off[e]
                        if flat[q]:
                            continue
                        if mark[q] == 2:
                            outside = True
                            break
                        if mark[q] == 1:
                            continue
                        if count == max_area:
                            outside = True
                            break
                        mark[q] = 1
                        seen[count] = q
                        count += 1
                        stack[top] = q
                        top += 1
                for k in range(count):
                    if outside:
                        mark[seen[k]] = 2
                    else:
                        flat[seen[k]] = 1
                        mark[seen[k]] = 0
                if not outside:
                    filled += count
    free(mark); free(stack); free(seen)
    return filled


def component_links(const int64_t[::1] pts, const uint8_t[::1] outline, const int64_t[::1] comp,
                    Py_ssize_t n_comp, Py_ssize_t w, double max_distance):
    """Closest pixel pairs between components closer than ``max_distance``.

    ``pts``: flat indices of the pixels grouped by component (``comp``,
    ascending; raster order within), ``outline``: 1 for pixels with a
    4-neighbour in the background (the closest points of two blobs lie on
    their outlines). For each pair of components i < j whose bounding boxes
    are within ``max_distance``, the outline pixels of each within
    ``max_distance`` of the other's box are compared exhaustively; the first
    closest pair (i's pixels in order, then j's) is kept. Returns rows
    (distance, i, j, pixel of i, pixel of j) as five arrays."""
    cdef Py_ssize_t n = pts.shape[0], i, j, a, b, k, n_links = 0
    if outline.shape[0] != n or comp.shape[0] != n or w < 1:
        raise ValueError("pts, outline and comp must have one entry per pixel")
    for k in range(n):
        if comp[k] < 0 or comp[k] >= n_comp or (k > 0 and comp[k] < comp[k - 1]):
            raise ValueError("comp must be ascending component numbers below n_comp")
    cdef int64_t* start = <int64_t*>calloc(n_comp + 1, sizeof(int64_t))
    cdef int64_t* box = <int64_t*>malloc(4 * n_comp * sizeof(int64_t))  # r0, r1, c0, c1
    if start == NULL or box == NULL:
        free(start); free(box)
        raise MemoryError()
    cdef int64_t r, c, ra, ca, rb, cb, gy, gx, best, d2, best_a = 0, best_b = 0
    cdef double md = max_distance
    cdef int64_t lim = <int64_t>(md * md)
    cdef int64_t m = <int64_t>md  # integer margin: only pixels within it of a box can be close enough
    out_d = []
    out_i = []
    out_j = []
    out_a = []
    out_b = []
    for i in range(n_comp):
        box[4 * i] = box[4 * i + 2] = 1 << 62
        box[4 * i + 1] = box[4 * i + 3] = -1
    for k in range(n):
        i = comp[k]
        start[i + 1] = k + 1
        r = pts[k] // w
        c = pts[k] - r * w
        if r < box[4 * i]: box[4 * i] = r
        if r > box[4 * i + 1]: box[4 * i + 1] = r
        if c < box[4 * i + 2]: box[4 * i + 2] = c
        if c > box[4 * i + 3]: box[4 * i + 3] = c
    for i in range(1, n_comp + 1):
        if start[i] < start[i - 1]:
            start[i] = start[i - 1]
    for i in range(n_comp):
        for j in range(i + 1, n_comp):
            gy = max(0, box[4 * j] - box[4 * i + 1], box[4 * i] - box[4 * j + 1])
            gx = max(0, box[4 * j + 2] - box[4 * i + 3], box[4 * i + 2] - box[4 * j + 3])
            if gy * gy + gx * gx > lim:
                continue
            best = -1
            for a in range(start[i], start[i + 1]):
                if not outline[a]:
                    continue
                ra = pts[a] // w
                ca = pts[a] - ra * w
                if (ra < box[4 * j] - m or ra > box[4 * j + 1] + m
                        or ca < box[4 * j + 2] - m or ca > box[4 * j + 3] + m):
                    continue
                for b in range(start[j], start[j + 1]):
                    if not outline[b]:
                        continue
                    rb = pts[b] // w
                    cb = pts[b] - rb * w
                    if (rb < box[4 * i] - m or rb > box[4 * i + 1] + m
                            or cb < box[4 * i + 2] - m or cb > box[4 * i + 3] + m):
                        continue
                    d2 = (ra - rb) * (ra - rb) + (ca - cb) * (ca - cb)
                    if best < 0 or d2 < best:
                        best = d2
                        best_a = pts[a]
                        best_b = pts[b]
            if best >= 0 and best <= lim:
                out_d.append(sqrt(<double>best))
                out_i.append(i)
                out_j.append(j)
                out_a.append(best_a)
                out_b.append(best_b)
    free(start); free(box)
    return out_d, out_i, out_j, out_a, out_b


def rdp_keep(const double[:, ::1] pts, double epsilon):
    """Ramer-Douglas-Peucker as ``postprocess.rdp`` (same arithmetic, same
    result): which of the (N, 2) points to keep. A segment's farthest point
    (the first of equals) from the straight line through its two ends is kept
    when more than ``epsilon`` away, and both halves are searched again; when
    the two ends coincide, the distance to that point is used."""
    cdef Py_ssize_t n = pts.shape[0], a, b, k, best_k, top = 0
    keep_a = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return keep_a.view(bool)
    if pts.shape[1] != 2:
        raise ValueError("points must be (N, 2)")
    cdef uint8_t[::1] keep = keep_a
    keep[0] = keep[n - 1] = 1
    if n < 3:
        return keep_a.view(bool)
    cdef Py_ssize_t* stack = <Py_ssize_t*>malloc(2 * n * sizeof(Py_ssize_t))
    if stack == NULL:
        raise MemoryError()
    cdef double dx, dy, length, r0, r1, dist, best
    with nogil:
        stack[0] = 0
        stack[1] = n - 1
        top = 1
        while top > 0:
            top -= 1
            a = stack[2 * top]
            b = stack[2 * top + 1]
            if b - a < 2:
                continue
            dy = pts[b, 0] - pts[a, 0]
            dx = pts[b, 1] - pts[a, 1]
            length = hypot(dx, dy)
            best = -1.0
            best_k = a + 1
            for k in range(a + 1, b):
                r0 = pts[k, 0] - pts[a, 0]
                r1 = pts[k, 1] - pts[a, 1]
                if length == 0:
                    dist = hypot(r0, r1)
                else:
                    dist = fabs(r0 * dx - r1 * dy) / length
                if dist > best:
                    best = dist
                    best_k = k
            if best > epsilon:
                keep[best_k] = 1
                stack[2 * top] = a
                stack[2 * top + 1] = best_k
                stack[2 * top + 2] = best_k
                stack[2 * top + 3] = b
                top += 2
    free(stack)
    return keep_a.view(bool)
