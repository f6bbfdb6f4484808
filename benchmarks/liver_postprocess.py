"""Benchmark: liver post-processing chain per 416 x 320 frame on CPU.

Compares ``surgseg_core.methods.liver.postprocess.postprocess`` with a
straightforward implementation of the same steps (full-image FOV smoothing
and hole filling, a Python loop over columns for ligament culling, a
full-image distance transform per fragment for joining, full-image thinning,
pixel-by-pixel path walking, skimage's RDP, full-image dilation at the output
size) in the same run, on synthetic liver masks with prediction-like defects
(gaps, specks outside the field of view, stray ligament pixels).

Goal (issue 5): the whole chain <= 3 ms per frame. Timed with the field of
view estimated from every frame (what LiverPredictor.predict does, it passes
the image) and with one FOV per video passed as ``fov=``; with the compiled
kernels (``_kernels.pyx``, built at install) and with their numpy twins (what
an install without a C compiler runs). A second table splits the per-frame
time over the chain's steps. The tables go into
BENCHMARKS.md between ``<!-- bench:liver_postprocess -->`` markers.

    python benchmarks/liver_postprocess.py [--frames 20] [--repeat 5] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from scipy import ndimage as ndi

from _bench_md import cpu_name, write_section  # benchmarks/ is on sys.path when run as a script

from surgseg_core.methods.liver import LANDMARK_CLASSES, LIGAMENT, RIDGE, SILHOUETTE, _fast
from surgseg_core.methods.liver.postprocess import PostprocessOptions, estimate_fov, postprocess

SECTION = "liver_postprocess"


# ------------------------------------------------------------ test frames
def make_frames(n: int, seed: int = 0):
    from surgseg_core.synth import generate_liver_scene

    scene = generate_liver_scene(seed=seed, n_frames=n, height=320, width=416)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fr = scene.frame(i)
        lab = fr.mask.copy()
        # prediction-like defects: gaps in the curves, specks outside the view, stray ligament
        for _ in range(3):
            x = rng.integers(40, 370)
            lab[:, x:x + rng.integers(4, 12)] = 0
        ys, xs = np.nonzero(~fr.fov)
        pick = rng.integers(0, len(ys), 30)
        lab[ys[pick], xs[pick]] = rng.integers(1, 4, 30)
        lab[rng.integers(0, 20), rng.integers(100, 300)] = LIGAMENT
        out.append((fr.image, lab))
    return out


# ------------------------------------------- the straightforward version
def naive_postprocess(labels, image, out_shape, join_distance=15.0, eps=1.0, thickness=12.0):
    from skimage.draw import line
    from skimage.measure import approximate_polygon
    from skimage.morphology import disk, skeletonize

    h, w = labels.shape
    # 1. FOV: full-resolution smoothing, threshold, largest component, fill holes
    lum = ndi.gaussian_filter(image.max(axis=2).astype(float), 2)
    lab, n = ndi.label(lum > 20)
    if n:
        sizes = ndi.sum(np.ones_like(lab), lab, range(1, n + 1))
        fov = ndi.binary_fill_holes(lab == (np.argmax(sizes) + 1))
        labels = np.where(fov, labels, 0)
    # 2. ligament culling, column by column
    labels = labels.copy()
    rid, sil = labels == RIDGE, labels == SILHOUETTE
    if rid.any() and sil.any():
        def extents(m):
            cols = [x for x in range(w) if m[:, x].any()]
            tops = [np.nonzero(m[:, x])[0][0] for x in cols]
            bots = [np.nonzero(m[:, x])[0][-1] for x in cols]
            return np.interp(np.arange(w), cols, tops), np.interp(np.arange(w), cols, bots)
        (rt, rb), (st, sb) = extents(rid), extents(sil)
        for y, x in zip(*np.nonzero(labels == LIGAMENT)):
            if y < min(rt[x], st[x]) or y > max(rb[x], sb[x]):
                labels[y, x] = 0
    polylines = {}
    for cls in LANDMARK_CLASSES:
        m = labels == cls
        # 3. joining with a full-image distance transform per fragment
        comp, n = ndi.label(m, np.ones((3, 3)))
        for i in range(1, n + 1):
            dist, (iy, ix) = ndi.distance_transform_edt(comp != i, return_indices=True)
            for j in range(i + 1, n + 1):
                d = np.where(comp == j, dist, np.inf)
                k = np.unravel_index(np.argmin(d), d.shape)
                if d[k] <= join_distance:
                    rr, cc = line(k[0], k[1], iy[k], ix[k])
                    m[rr, cc] = True
        # 4. thinning on the full image
        sk = skeletonize(m, method="zhang")
        # 5. walk the skeleton pixel by pixel, then skimage RDP
        pix = set(zip(*np.nonzero(sk)))
        paths = []
        while pix:
            nb = lambda p: [(p[0] + dy, p[1] + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)  # noqa: E731
                            if (dy or dx) and (p[0] + dy, p[1] + dx) in pix]
            start = next((p for p in pix if len(nb(p)) == 1), next(iter(pix)))
            path = [start]
            pix.discard(start)
            while True:
                nxt = nb(path[-1])
                if not nxt:
                    break
                path.append(nxt[0])
                pix.discard(nxt[0])
            if len(path) >= 2:
                paths.append(approximate_polygon(np.array(path, float), eps)[:, ::-1])
        polylines[cls] = paths
    # 6. outputs: thin lines at the output size, then a full-image dilation
    sy, sx = out_shape[0] / h, out_shape[1] / w
    thin = np.zeros(out_shape, np.uint8)
    for cls, paths in polylines.items():
        for p in paths:
            q = np.column_stack([(p[:, 0] + 0.5) * sx - 0.5, (p[:, 1] + 0.5) * sy - 0.5]).round().astype(int)
            for (x0, y0), (x1, y1) in zip(q[:-1], q[1:]):
                rr, cc = line(y0, x0, y1, x1)
                ok = (rr >= 0) & (rr < out_shape[0]) & (cc >= 0) & (cc < out_shape[1])
                thin[rr[ok], cc[ok]] = cls
    dil = np.zeros_like(thin)
    fp = disk(int(thickness // 2))
    for cls in LANDMARK_CLASSES:
        dil[ndi.binary_dilation(thin == cls, fp)] = cls
    return polylines, thin, dil


# ---------------------------------------------------------------- timing
def time_per_frame(fn, frames, repeat):
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for img, lab in frames:
            fn(img, lab)
        runs.append((time.perf_counter() - t0) / len(frames) * 1e3)
    return statistics.median(runs), min(runs)


# the chain's steps, in order (module-level functions of postprocess that it calls)
STEPS = (("FOV estimate (1.)", "_fov_small"), ("ligament culling (2.)", "ligament_keep"),
         ("joining (3.)", "_join_fragments"), ("hole filling (4.)", "fill_small_holes"),
         ("Zhang-Suen (4.)", "skeletonize_crops"), ("tracing (5.)", "trace_label_skeleton"),
         ("RDP (5.)", "simplify_path"), ("thin + 12 px maps (6.)", "rasterize_curves"))


def step_times(frames, out_shape, opts, repeat=3):
    """ms per frame spent in each step (the best of ``repeat`` runs), by
    wrapping the step functions of the postprocess module for the run."""
    from surgseg_core.methods.liver import postprocess as pp

    spent = {}
    saved = {name: getattr(pp, name) for _, name in STEPS}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    best = {}
    try:
        for name, fn in saved.items():
            setattr(pp, name, timed(name, fn))
        for _ in range(repeat):
            spent.clear()
            for img, lab in frames:
                pp.postprocess(lab, img, out_shape=out_shape, options=opts)
            for name, v in spent.items():
                best[name] = min(best.get(name, np.inf), v / len(frames) * 1e3)
    finally:
        for name, fn in saved.items():
            setattr(pp, name, fn)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-repeat", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    frames = make_frames(args.frames)
    opts = PostprocessOptions(out_thickness=12.0)
    # the endoscope's field of view does not move within a video: a caller may
    # estimate it once (first frame) and pass ``fov=``; LiverPredictor.predict
    # currently passes the image, i.e. estimates it on every frame (first rows)
    video_fov = estimate_fov(frames[0][0], opts.fov_threshold, shape=opts.fov_shape,
                             out_shape=frames[0][1].shape)
    rows = []
    agree = []
    compiled = _fast.kernels
    impls = [("compiled", compiled)] if compiled is not None else []
    impls.append(("numpy only", None))
    for out_shape in ((320, 416), (1080, 1920)):
        fast = lambda img, lab: postprocess(lab, img, out_shape=out_shape, options=opts)  # noqa: E731
        fast_fov = lambda img, lab: postprocess(lab, None, out_shape=out_shape, options=opts,  # noqa: E731
                                                fov=video_fov)
        naive = lambda img, lab: naive_postprocess(lab, img, out_shape)  # noqa: E731
        fast(*frames[0]), fast_fov(*frames[0]), naive(*frames[0])  # warm-up (imports)
        n_med, n_min = time_per_frame(naive, frames, args.naive_repeat)
        for impl, kernels in impls:
            _fast.kernels = kernels
            f_med, f_min = time_per_frame(fast, frames, args.repeat)
            rows.append((out_shape, impl, "FOV estimated per frame", f_med, f_min, n_med, n_min))
            f_med, f_min = time_per_frame(fast_fov, frames, args.repeat)
            rows.append((out_shape, impl, "video's FOV passed (`fov=`)", f_med, f_min, n_med, n_min))
        _fast.kernels = compiled
        if out_shape == (320, 416):
            for img, lab in frames:
                a = postprocess(lab, img, out_shape=out_shape, options=opts).dilated
                b = naive_postprocess(lab, img, out_shape)[2]
                agree.append(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))
    lines = [
        "Liver post-processing chain (FOV culling, ligament culling, joining, Zhang-Suen, tracing + RDP,",
        "thin and 12 px dilated outputs), per 416 x 320 label map, single process, "
        f"{args.frames} synthetic frames with prediction-like defects.",
        f"Machine: {os.cpu_count()}-core CPU ({cpu_name()}), no GPU, Python {platform.python_version()}; "
        "the CPU may be shared with other jobs, so compare the ratio within a run.",
        "Kernels: `compiled` = the Cython kernels built at install (`_kernels.pyx`); `numpy only` = their "
        "numpy twins, what an install without a C compiler runs (same results).",
        "",
        "| output size | kernels | camera culling | surgseg ms/frame (median / best) "
        "| straightforward ms/frame (median / best) | speed-up | <= 3 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for (h, w), impl, how, f_med, f_min, n_med, n_min in rows:
        lines.append(f"| {w} x {h} | {impl} | {how} | {f_med:.2f} / {f_min:.2f} | {n_med:.1f} / {n_min:.1f} "
                     f"| {n_med / f_med:.0f}x | {'yes' if f_med <= 3.0 else 'no'} |")
    steps = step_times(frames, (320, 416), opts)
    lines += ["", f"Where the time goes ({impls[0][0]} kernels, 416 x 320 output, FOV estimated per frame; "
              "ms per frame):", "",
              "| " + " | ".join(label for label, _ in STEPS) + " |", "|" + "---|" * len(STEPS),
              "| " + " | ".join(f"{steps.get(name, 0.0):.2f}" for _, name in STEPS) + " |"]
    lines += ["", f"Goal: <= 3 ms per frame. Agreement of the two dilated outputs (IoU of landmark pixels, "
              f"416 x 320): mean {np.mean(agree):.2f}. The straightforward version always estimates the FOV.",
              "Run: `python benchmarks/liver_postprocess.py`"]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
