"""The compiled post-processing kernels against their numpy twins and by hand."""
import os

import numpy as np
import pytest
from scipy import ndimage as ndi

from surgseg_core.methods.liver import LIGAMENT, RIDGE, SILHOUETTE, _fast
from surgseg_core.methods.liver.postprocess import (
    PostprocessOptions,
    _component_links_compiled,
    _component_links_numpy,
    fill_small_holes,
    postprocess,
)
from surgseg_core.methods.liver.skeleton_paths import trace_label_skeleton

K = _fast.kernels
needs_kernels = pytest.mark.skipif(K is None, reason="compiled kernels not built")


def test_compiled_kernels_are_built():
    """The install builds them (setup.py, Cython); without them every other
    test here would compare numpy with itself."""
    if os.environ.get("SURGSEG_NO_COMPILED"):
        pytest.skip("SURGSEG_NO_COMPILED is set")
    assert K is not None, ("surgseg_core.methods.liver._kernels is missing: reinstall with a C compiler "
                           "(pip install -e .) to build it")


def _flat(mask):
    """(flat copy with a margin, row length, foreground indices, padding)."""
    flat, w, pad = _fast.flat_view(mask)
    return flat.copy(), w, np.flatnonzero(flat), pad


def _random_masks(seed, n=40, shape=(40, 60)):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        m = rng.random(shape) > rng.uniform(0.6, 0.97)
        yield ndi.binary_dilation(m, iterations=int(rng.integers(0, 3)))


@needs_kernels
def test_label8_matches_scipy():
    for m in _random_masks(0):
        flat, w, pts, pad = _flat(m)
        lab, n = K.label8(flat.view(np.uint8), pts, w)
        ref, rn = ndi.label(m, np.ones((3, 3)))
        assert n == rn
        ref_at = np.pad(ref, pad).ravel()[pts]
        # numbered in raster order of first pixel, as scipy does
        assert np.array_equal(lab + 1, ref_at)


@needs_kernels
def test_euler8_and_thinning_match_numpy():
    from skimage.measure import euler_number
    from skimage.morphology import skeletonize

    for m in _random_masks(1):
        flat, w, pts, pad = _flat(m)
        assert K.euler8(flat.view(np.uint8), pts, w) == euler_number(m, connectivity=2)
        sk = K.zhang_suen(flat.view(np.uint8), pts, w, _fast._ZS_LUT)
        assert np.array_equal(sk, np.flatnonzero(np.pad(skeletonize(m, method="zhang"), pad)))


@needs_kernels
def test_fill_small_holes_budget_and_border_by_hand():
    m = np.zeros((30, 40), bool)
    m[5:25, 5:35] = True
    m[8:10, 8:12] = False      # 8 px hole
    m[12:16, 20:28] = False    # 32 px hole
    m[20:25, 30:33] = False    # a notch open to the outside (reaches the edge of the blob)
    for max_area, filled in ((7, ()), (8, ((8, 8),)), (31, ((8, 8),)), (32, ((8, 8), (12, 20)))):
        out = fill_small_holes(m, max_area)
        assert out[8, 8] == ((8, 8) in filled) and out[12, 20] == ((12, 20) in filled)
        assert not out[24, 31]  # the notch is background connected to the outside
        flat, w, pts, _ = _flat(m)
        n = K.fill_small_holes(flat.view(np.uint8), pts, w, max_area)
        assert n == sum({(8, 8): 8, (12, 20): 32}[f] for f in filled)
    # a hole cut by the image border is not a hole
    edge = np.ones((10, 10), bool)
    edge[0:3, 4:6] = False
    assert not fill_small_holes(edge, 64)[0:3, 4:6].any()


@needs_kernels
def test_fill_small_holes_same_as_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    for m in _random_masks(3):
        max_area = int(rng.integers(1, 40))
        fast = fill_small_holes(m, max_area)
        monkeypatch.setattr(_fast, "kernels", None)
        slow = fill_small_holes(m, max_area)
        monkeypatch.setattr(_fast, "kernels", K)
        assert np.array_equal(fast, slow)


@needs_kernels
def test_component_links_same_as_numpy():
    for m in _random_masks(4, shape=(50, 50)):
        for dist in (3.0, 7.5, 15.0):
            n1, e1 = _component_links_compiled(m, dist)
            n2, e2 = _component_links_numpy(m, dist)
            assert n1 == n2 and len(e1) == len(e2)
            for a, b in zip(e1, e2):
                assert a[1:3] == b[1:3] and a[0] == pytest.approx(b[0])
                # the pair found is at that distance (ties may pick other pixels)
                assert np.hypot(a[3][0] - a[4][0], a[3][1] - a[4][1]) == pytest.approx(b[0])


@needs_kernels
def test_skeleton_segments_same_paths_as_numpy(monkeypatch):
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(5)
    for _ in range(30):
        lab = np.zeros((50, 70), np.uint8)
        for cls in (SILHOUETTE, RIDGE, LIGAMENT):
            blob = ndi.binary_dilation(rng.random(lab.shape) > 0.985, iterations=3)
            lab[skeletonize(blob, method="zhang") & (lab == 0)] = cls
        for min_branch in (0, 8):
            fast = trace_label_skeleton(lab, 2, min_branch)
            monkeypatch.setattr(_fast, "kernels", None)
            slow = trace_label_skeleton(lab, 2, min_branch)
            monkeypatch.setattr(_fast, "kernels", K)
            assert len(fast) == len(slow)
            for (c1, p1), (c2, p2) in zip(fast, slow):
                assert c1 == c2 and np.array_equal(p1, p2)


@needs_kernels
def test_whole_chain_same_as_numpy(monkeypatch):
    from surgseg_core.synth import generate_liver_scene

    scene = generate_liver_scene(seed=7, n_frames=6, height=320, width=416)
    rng = np.random.default_rng(7)
    opts = PostprocessOptions()
    for i in range(6):
        fr = scene.frame(i)
        lab = fr.mask.copy()
        for _ in range(3):  # gaps, as a network's prediction has
            x = rng.integers(40, 370)
            lab[:, x:x + rng.integers(4, 12)] = 0
        fast = postprocess(lab, fr.image, options=opts)
        monkeypatch.setattr(_fast, "kernels", None)
        slow = postprocess(lab, fr.image, options=opts)
        monkeypatch.setattr(_fast, "kernels", K)
        assert np.array_equal(fast.thin, slow.thin) and np.array_equal(fast.dilated, slow.dilated)
        for cls in fast.polylines:
            assert [p.tolist() for p in fast.polylines[cls]] == [p.tolist() for p in slow.polylines[cls]]


@needs_kernels
def test_kernels_refuse_inputs_that_would_read_outside_the_image():
    m = np.zeros((6, 8), np.uint8)
    m[0, 3] = 1  # on the outermost frame
    flat = m.ravel().copy()
    pts = np.flatnonzero(flat)
    for call in (lambda: K.label8(flat, pts, 8), lambda: K.euler8(flat, pts, 8),
                 lambda: K.zhang_suen(flat, pts, 8, _fast._ZS_LUT), lambda: K.fill_small_holes(flat, pts, 8, 5),
                 lambda: K.skeleton_segments(flat, pts, 8), lambda: K.label8(flat, np.array([99]), 8),
                 lambda: K.label8(flat, pts, 7)):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        K.component_links(np.array([9, 10]), np.ones(2, np.uint8), np.array([1, 0]), 2, 8, 5.0)


@needs_kernels
def test_rdp_same_as_numpy(monkeypatch):
    from surgseg_core.methods.liver.postprocess import rdp

    rng = np.random.default_rng(6)
    for _ in range(40):
        pts = np.cumsum(rng.normal(size=(int(rng.integers(1, 200)), 2)), axis=0)
        if rng.random() < 0.2:
            pts[-1] = pts[0]  # closed: distances to the point
        for eps in (0.0, 0.3, 1.0, 4.0):
            fast = rdp(pts, eps)
            monkeypatch.setattr(_fast, "kernels", None)
            slow = rdp(pts, eps)
            monkeypatch.setattr(_fast, "kernels", K)
            assert np.array_equal(fast, slow)
