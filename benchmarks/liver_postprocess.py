"""Benchmark: liver post-processing chain per 416 x 320 frame on CPU.

Compares ``surgseg_core.methods.liver.postprocess.postprocess`` with a
straightforward implementation of the same steps (full-image FOV smoothing
and hole filling, a Python loop over columns for ligament culling, a
full-image distance transform per fragment for joining, full-image thinning,
pixel-by-pixel path walking, skimage's RDP, full-image dilation at the output
size) in the same run, on synthetic liver masks with prediction-like defects
(gaps, specks outside the field of view, stray ligament pixels).

Goal (issue 5): the whole chain <= 3 ms per frame. The table goes into
BENCHMARKS.md between ``<!-- bench:liver_postprocess -->`` markers.

    python benchmarks/liver_postprocess.py [--frames 20] [--repeat 5] [--no-write]
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from surgseg_core.methods.liver import LANDMARK_CLASSES, LIGAMENT, RIDGE, SILHOUETTE
from surgseg_core.methods.liver.postprocess import PostprocessOptions, postprocess

ROOT = Path(__file__).resolve().parents[1]
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


def write_section(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    start, end = f"<!-- bench:{SECTION} -->", f"<!-- /bench:{SECTION} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    from surgseg_core.atomic import atomic_write_text

    atomic_write_text(path, new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-repeat", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    frames = make_frames(args.frames)
    opts = PostprocessOptions(out_thickness=12.0)
    rows = []
    agree = []
    for out_shape in ((320, 416), (1080, 1920)):
        fast = lambda img, lab: postprocess(lab, img, out_shape=out_shape, options=opts)  # noqa: E731
        naive = lambda img, lab: naive_postprocess(lab, img, out_shape)  # noqa: E731
        fast(*frames[0]), naive(*frames[0])  # warm-up (imports)
        f_med, f_min = time_per_frame(fast, frames, args.repeat)
        n_med, n_min = time_per_frame(naive, frames, args.naive_repeat)
        rows.append((out_shape, f_med, f_min, n_med, n_min))
        if out_shape == (320, 416):
            for img, lab in frames:
                a = postprocess(lab, img, out_shape=out_shape, options=opts).dilated
                b = naive_postprocess(lab, img, out_shape)[2]
                agree.append(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))
    lines = [
        "Liver post-processing chain (FOV culling, ligament culling, joining, Zhang-Suen, tracing + RDP,",
        "thin and 12 px dilated outputs), per 416 x 320 label map, single process, "
        f"{args.frames} synthetic frames with prediction-like defects.",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        "the CPU may be shared with other jobs, so compare the ratio within a run.",
        "",
        "| output size | surgseg ms/frame (median / best) | straightforward ms/frame (median / best) | speed-up |",
        "|---|---|---|---|",
    ]
    for (h, w), f_med, f_min, n_med, n_min in rows:
        lines.append(f"| {w} x {h} | {f_med:.2f} / {f_min:.2f} | {n_med:.1f} / {n_min:.1f} | {n_med / f_med:.0f}x |")
    lines += ["", f"Goal: <= 3 ms per frame. Agreement of the two dilated outputs (IoU of landmark pixels, "
              f"416 x 320): mean {np.mean(agree):.2f}.",
              "Run: `python benchmarks/liver_postprocess.py`"]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
