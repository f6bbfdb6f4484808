"""Liver post-processing steps and the whole chain."""
import numpy as np
import pytest

from surgseg_core.errors import ConfigError
from surgseg_core.methods.liver import LIGAMENT, RIDGE, SILHOUETTE
from surgseg_core.methods.liver.postprocess import (
    PostprocessOptions,
    cull_ligament,
    cull_outside_fov,
    estimate_fov,
    join_fragments,
    landmark_polylines,
    postprocess,
    rdp,
    simplify_path,
)
from surgseg_core.methods.liver.rasterize import rasterize_curves, scale_curves
from surgseg_core.methods.liver.skeleton_paths import trace_skeleton
from scipy import ndimage as ndi


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def implementation(request, monkeypatch):
    """Every test here runs on the compiled kernels and on their numpy twins
    (what users without a C compiler get)."""
    from surgseg_core.methods.liver import _fast

    if request.param == "compiled" and _fast.kernels is None:
        pytest.skip("compiled kernels not built (test_liver_kernels.py says why)")
    if request.param == "numpy":
        monkeypatch.setattr(_fast, "kernels", None)
    return request.param


def _endoscope_frame(h=320, w=416, radius=180, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= radius**2
    img = np.zeros((h, w, 3), np.uint8)
    tissue = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
    img[disk] = tissue[disk]
    img[(xx - w / 2 - 30) ** 2 + (yy - h / 2) ** 2 < 25**2] = 5  # dark spot inside the view
    img = np.clip(img.astype(int) + rng.integers(0, 6, img.shape), 0, 255).astype(np.uint8)  # sensor noise
    return img, disk


def test_fov_fits_dark_border_and_keeps_dark_tissue():
    img, disk = _endoscope_frame()
    fov = estimate_fov(img)
    iou = (fov & disk).sum() / (fov | disk).sum()
    assert iou > 0.95
    assert fov[160, 238]  # the dark spot inside the view is a hole, filled
    circle = estimate_fov(img, shape="circle")
    assert (circle & disk).sum() / (circle | disk).sum() > 0.95
    # a frame without a border: nothing is culled
    assert estimate_fov(np.full((320, 416, 3), 120, np.uint8)).all()


def test_camera_culling_drops_outside_predictions():
    img, disk = _endoscope_frame()
    labels = np.zeros(disk.shape, np.uint8)
    labels[5, :] = RIDGE  # crosses the dark border: only its middle is inside the view
    labels[160, 100:300] = SILHOUETTE
    out = cull_outside_fov(labels, estimate_fov(img))
    assert not out[5, :100].any() and not out[5, 320:].any() and (out[5, 150:260] == RIDGE).all()
    assert (out[160, 100:300] == SILHOUETTE).all()
    with pytest.raises(ConfigError):
        cull_outside_fov(labels, np.ones((3, 3), bool))


def test_ligament_culling_columns_rule_and_bbox_rule():
    labels = np.zeros((120, 120), np.uint8)
    labels[50, 10:91] = RIDGE
    labels[80, 10:91] = SILHOUETTE
    labels[20, 40] = LIGAMENT   # above both
    labels[65, 40] = LIGAMENT   # between
    labels[100, 40] = LIGAMENT  # below both
    labels[65, 100] = LIGAMENT  # between, but right of the ridge/silhouette extent
    out = cull_ligament(labels, "columns")
    assert out[20, 40] == 0 and out[100, 40] == 0
    assert out[65, 40] == LIGAMENT and out[65, 100] == LIGAMENT  # extents held beyond the ends
    box = cull_ligament(labels, "bbox")
    assert box[65, 40] == LIGAMENT and box[65, 100] == 0 and box[20, 40] == 0
    # per-column extents, not one global range: tilted ridge and silhouette
    tilted = np.zeros((120, 120), np.uint8)
    for x in range(10, 110):
        tilted[x // 2, x] = RIDGE          # row 50 at x = 100, row 5 at x = 10
        tilted[20 + x // 2, x] = SILHOUETTE  # row 70 at x = 100
    tilted[30, 100] = LIGAMENT  # above both at column 100, though between them at column 10
    tilted[60, 100] = LIGAMENT  # between them
    out = cull_ligament(tilted, "columns")
    assert out[30, 100] == 0 and out[60, 100] == LIGAMENT
    assert cull_ligament(tilted, "bbox")[30, 100] == LIGAMENT  # the bounding box cannot tell
    # without a silhouette there is no "both": nothing is culled
    no_sil = labels.copy()
    no_sil[no_sil == SILHOUETTE] = 0
    assert (cull_ligament(no_sil, "columns") == no_sil).all()
    assert (cull_ligament(labels, None) == labels).all()


def test_join_fragments_within_distance_only():
    m = np.zeros((40, 100), bool)
    m[20, 5:40] = True
    m[20, 50:90] = True  # gap of 10 px
    joined = join_fragments(m, 15)
    assert ndi.label(joined, np.ones((3, 3)))[1] == 1
    assert joined[20, 40:50].all()
    assert ndi.label(join_fragments(m, 5), np.ones((3, 3)))[1] == 2


def test_trace_skeleton_orders_paths():
    sk = np.zeros((30, 60), bool)
    sk[10, 5:50] = True
    paths = trace_skeleton(sk)
    assert len(paths) == 1
    cols = paths[0][:, 1]
    assert len(cols) == 45 and (np.all(np.diff(cols) == 1) or np.all(np.diff(cols) == -1))
    # a Y: three branches meeting at one junction pixel
    y = np.zeros((40, 40), bool)
    for i in range(15):
        y[20 - i, 20 - i] = y[20 - i, 20 + i] = True
        y[20 + i, 20] = True
    branches = trace_skeleton(y)
    assert len(branches) == 3
    assert all(tuple(b[0]) == (20, 20) or tuple(b[-1]) == (20, 20) for b in branches)
    # a short spur (thinning artefact) is pruned and the line stays one path
    spur = sk.copy()
    spur[7:10, 30] = True
    assert len(trace_skeleton(spur)) == 3
    (merged,) = trace_skeleton(spur, min_branch=5)
    assert len(merged) == 45 and set(merged[:, 0]) == {10}
    # a closed ring comes back to its start
    ring = np.zeros((30, 30), bool)
    ring[5, 5:25] = ring[24, 5:25] = ring[5:25, 5] = ring[5:25, 24] = True
    (loop,) = trace_skeleton(ring)
    assert tuple(loop[0]) == tuple(loop[-1]) and len(loop) == 77


def _max_deviation(points, simplified):
    """Largest distance from any original point to the simplified polyline."""
    worst = 0.0
    for p in points:
        best = np.inf
        for a, b in zip(simplified[:-1], simplified[1:]):
            ab = b - a
            t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0, 1)
            best = min(best, np.linalg.norm(p - (a + t * ab)))
        worst = max(worst, best)
    return worst


def test_rdp_by_hand_and_tolerance():
    pts = np.array([[0, 0], [1, 0.5], [2, 0], [3, 0], [4, 0]], float)
    assert np.array_equal(rdp(pts, 1.0), pts[[0, 4]])
    # (1, 0.5) is 0.5 from the chord; then (2, 0) is |1 * -0.5 - (-0.5) * 3| / |(3, -0.5)| = 0.329
    # from the line (1, 0.5)-(4, 0)
    assert np.array_equal(rdp(pts, 0.4), pts[[0, 1, 4]])
    assert np.array_equal(rdp(pts, 0.3), pts[[0, 1, 2, 4]])
    rng = np.random.default_rng(0)
    steps = np.array([[0, 1], [1, 1], [1, 0], [-1, 1], [1, -1]])
    path = np.cumsum(steps[rng.integers(0, 5, 200)], axis=0)
    for eps in (0.5, 1.0, 3.0):
        s = simplify_path(path, eps)
        assert len(s) < len(path) and tuple(s[0]) == tuple(path[0]) and tuple(s[-1]) == tuple(path[-1])
        assert _max_deviation(path.astype(float), s) <= eps + 1e-9


def test_simplify_path_is_the_papers_rdp_on_open_pixel_paths():
    """simplify_path (OpenCV's approxPolyDP for open paths) keeps exactly the
    points rdp keeps; epsilons avoid exact ties with integer geometry."""
    rng = np.random.default_rng(3)
    steps = np.array([[0, 1], [1, 1], [1, 0], [-1, 1], [1, -1], [0, -1]])
    for _ in range(30):
        path = np.cumsum(steps[rng.integers(0, 6, int(rng.integers(3, 300)))], axis=0)
        if np.array_equal(path[0], path[-1]):
            continue
        for eps in (0.77, 1.234567, 2.9):
            assert np.array_equal(simplify_path(path, eps), rdp(path.astype(float), eps))


def _curves():
    x = np.linspace(30, 380, 80)
    return {
        SILHOUETTE: [np.column_stack([x, 220 + 40 * np.sin(x / 70)])],
        # two ridge pieces 13 px apart centre to centre (~8 px between their edges)
        RIDGE: [np.column_stack([x[5:36], 150 + 15 * np.cos(x[5:36] / 50)]),
                np.column_stack([x[39:70], 150 + 15 * np.cos(x[39:70] / 50)])],
        # between ridge (y ~164) and silhouette (y ~184) at x = 300
        LIGAMENT: [np.column_stack([np.full(6, 300.0), np.linspace(170, 178, 6)])],
    }


def test_chain_outputs_at_original_resolution():
    img, _ = _endoscope_frame()
    labels = rasterize_curves(_curves(), (320, 416), 5)
    res = postprocess(labels, img, out_shape=(1080, 1920), options=PostprocessOptions(out_thickness=12))
    assert res.thin.shape == res.dilated.shape == (1080, 1920)
    # the ~8 px gap of the ridge was joined: ridge pixels all the way across
    gap_x = (np.linspace(30, 380, 80)[[35, 39]] * 1920 / 416).astype(int)
    ridge_cols = np.nonzero((res.thin == RIDGE).any(axis=0))[0]
    assert np.isin(np.arange(gap_x[0], gap_x[1]), ridge_cols).all()
    assert len(res.polylines[SILHOUETTE]) == 1 and len(res.polylines[LIGAMENT]) == 1
    # polylines lie on the scaled truth curves
    truth = rasterize_curves(scale_curves(_curves(), 1920 / 416, 1080 / 320), (1080, 1920), 1)
    dist = ndi.distance_transform_edt(truth != SILHOUETTE)
    sil = res.thin == SILHOUETTE
    assert np.median(dist[sil]) < 3.0
    # dilated at 12 px, not an upsampled 5 px mask (which would be ~23 px thick)
    col = res.dilated[:, 960] == SILHOUETTE
    assert 9 <= col.sum() <= 14
    # the thin map is one pixel wide
    assert (res.thin[:, 960] == SILHOUETTE).sum() <= 2


def test_chain_switches():
    labels = rasterize_curves(_curves(), (320, 416), 5)
    off = PostprocessOptions(camera_culling=False, ligament_culling=None, join=False, skeletonize=False,
                             simplify=False, out_thickness=None)
    res = postprocess(labels, None, options=off)
    assert res.polylines == {} and (res.thin == labels).all() and res.dilated is None
    no_join = landmark_polylines(labels, PostprocessOptions(join=False))
    assert len(no_join[RIDGE]) == 2
    joined = landmark_polylines(labels, PostprocessOptions(join=True))
    assert max(p[:, 0].max() for p in joined[RIDGE]) > min(p[:, 0].min() for p in joined[RIDGE])
    raw = landmark_polylines(labels, PostprocessOptions(simplify=False))
    simple = landmark_polylines(labels, PostprocessOptions(rdp_epsilon=1.0))
    assert len(simple[SILHOUETTE][0]) < len(raw[SILHOUETTE][0])
    with pytest.raises(ConfigError):
        PostprocessOptions(ligament_culling="diagonal")
    with pytest.raises(ConfigError):
        postprocess(np.zeros((2, 3, 4)))


def test_fov_on_real_laparoscopic_clip():
    from conftest import realdata_file
    from surgseg_core.io import open_video

    frame = np.asarray(open_video(realdata_file("lapchole_clip_rvimlab/endo.mp4"))[10])
    fov = estimate_fov(frame)
    circle = estimate_fov(frame, shape="circle")
    h, w = fov.shape
    assert not fov[0, 0] and not fov[-1, -1] and fov[h // 2, w // 2]
    assert 0.5 < fov.mean() < 0.95  # a circular view on black: the corners are out
    assert (fov & circle).sum() / (fov | circle).sum() > 0.95


def test_small_holes_are_filled_before_thinning():
    from surgseg_core.methods.liver.postprocess import fill_small_holes

    m = np.zeros((40, 80), bool)
    m[10:20, 5:75] = True
    m[14:16, 30:33] = False          # 6 px pocket
    m[11:19, 50:62] = False          # 96 px hole
    out = fill_small_holes(m, 64)
    assert out[14:16, 30:33].all() and not out[11:19, 50:62].any()
    assert (fill_small_holes(m, 0) == m).all()


def test_euler_number8_matches_components_minus_holes():
    from skimage.measure import euler_number

    from surgseg_core.methods.liver._fast import euler_number8

    m = np.zeros((20, 30), bool)
    m[2:9, 2:9] = True
    m[4:7, 4:7] = False        # one hole
    m[12, 20] = m[13, 21] = True  # diagonal pair: one 8-connected component
    m[15:18, 3:12] = True      # a bar touching the border below? no: a third component
    assert euler_number8(m) == 3 - 1
    assert euler_number8(np.zeros((5, 5), bool)) == 0
    full = np.ones((6, 7), bool)  # touching the image border everywhere
    assert euler_number8(full) == 1
    rng = np.random.default_rng(0)
    for _ in range(30):
        r = ndi.binary_dilation(rng.random((25, 35)) > 0.9, iterations=int(rng.integers(0, 3)))
        assert euler_number8(r) == euler_number(r, connectivity=2)


def test_fill_small_holes_with_component_hint_same_result():
    from surgseg_core.methods.liver.postprocess import _join_fragments, fill_small_holes

    m = np.zeros((40, 90), bool)
    m[10:20, 5:40] = True
    m[14:16, 20:23] = False     # a 6 px hole
    m[10:20, 50:85] = True      # a second blob 10 px away, no hole
    joined, n = _join_fragments(m, 15)
    assert n == 1 and ndi.label(joined, np.ones((3, 3)))[1] == 1
    assert (fill_small_holes(joined, 64, n) == fill_small_holes(joined, 64)).all()
    assert fill_small_holes(joined, 64, n)[14:16, 20:23].all()
    no_hole = m.copy()
    no_hole[14:16, 20:23] = True
    assert fill_small_holes(no_hole, 64, 2) is no_hole  # Euler check: nothing to fill, no labelling


def test_zhang_suen_on_pixel_list_equals_skimage():
    from skimage.morphology import skeletonize

    from surgseg_core.methods.liver._fast import zhang_suen, zhang_suen_points
    from surgseg_core.methods.liver.postprocess import skeletonize_crops

    rng = np.random.default_rng(1)
    masks = []
    for i in range(60):
        h, w = rng.integers(1, 45, 2)
        m = rng.random((h, w)) > rng.uniform(0.3, 0.95)
        if i % 2:
            m = ndi.binary_dilation(m, iterations=int(rng.integers(1, 4)))
        m[rng.random(m.shape) < 0.05] = True  # pixels on the image border too
        masks.append(m)
        assert np.array_equal(zhang_suen(m), skeletonize(m, method="zhang"))
    thick = rasterize_curves(_curves(), (320, 416), 7) == SILHOUETTE
    r, c = zhang_suen_points(thick)
    assert np.array_equal(np.column_stack([r, c]), np.argwhere(skeletonize(thick, method="zhang")))
    # several masks thinned in one stacked call give each one's own skeleton
    for m, (rr, cc) in zip(masks[:10], skeletonize_crops(masks[:10])):
        assert np.array_equal(np.column_stack([rr, cc]), np.argwhere(skeletonize(m, method="zhang")))
    assert skeletonize_crops([]) == []


def _dense_edges(lab):
    """The pixel-graph edges written with shifted copies of the image (reference)."""
    idx = np.full(lab.shape, -1, np.int64)
    rows, cols = np.nonzero(lab)
    idx[rows, cols] = np.arange(len(rows))
    src, dst = [], []
    a = (lab[:, :-1] == lab[:, 1:]) & (lab[:, :-1] > 0)
    src.append(idx[:, :-1][a]); dst.append(idx[:, 1:][a])
    a = (lab[:-1, :] == lab[1:, :]) & (lab[:-1, :] > 0)
    src.append(idx[:-1, :][a]); dst.append(idx[1:, :][a])
    tl, br, tr, bl = lab[:-1, :-1], lab[1:, 1:], lab[:-1, 1:], lab[1:, :-1]
    a = (tl == br) & (tl > 0) & (tr != tl) & (bl != tl)
    src.append(idx[:-1, :-1][a]); dst.append(idx[1:, 1:][a])
    a = (tr == bl) & (tr > 0) & (tl != tr) & (br != tr)
    src.append(idx[:-1, 1:][a]); dst.append(idx[1:, :-1][a])
    return np.concatenate(src), np.concatenate(dst)


def test_skeleton_graph_edges_from_pixel_list():
    from surgseg_core.methods.liver.skeleton_paths import _edges

    rng = np.random.default_rng(2)
    for _ in range(40):
        h, w = rng.integers(1, 30, 2)
        lab = ((rng.random((h, w)) > 0.5) * rng.integers(1, 4, (h, w))).astype(np.uint8)
        rows, cols = np.nonzero(lab)
        src, dst = _edges(lab, rows * w + cols)
        ref_src, ref_dst = _dense_edges(lab)
        # same edges in the same order (the depth-first walk depends on it)
        assert np.array_equal(src, ref_src) and np.array_equal(dst, ref_dst)


def test_join_fragments_touching_the_image_border():
    m = np.zeros((20, 40), bool)
    m[0, 0:10] = True     # along the top edge, from the left edge
    m[0, 15:40] = True    # to the right edge, 5 px gap
    m[19, 0] = True       # a corner pixel, far from both
    joined = join_fragments(m, 6)
    assert joined[0].all() and joined[19, 0] and joined.sum() == 41
    assert ndi.label(joined, np.ones((3, 3)))[1] == 2


def test_chain_keeps_a_real_p2ilf_ground_truth():
    """Post-processing the (downscaled) ground truth of a real P2ILF frame with
    the real frame for the FOV: curves come back at 1920 x 1080 on the truth."""
    import imageio.v3 as iio
    from conftest import realdata_file

    from surgseg_core.methods.liver import LANDMARK_CLASSES
    from surgseg_core.methods.liver.data import resize_mask
    from surgseg_core.methods.liver.metrics import dice
    from surgseg_core.methods.liver.readers import colour_labels_to_mask

    folder = "p2ilf_liver_landmarks/2D_imageLabel_metrics/image_labels_GT"
    truth = colour_labels_to_mask(iio.imread(realdata_file(f"{folder}/P2ILF22_patient1_12_GT.jpg")))
    image = iio.imread(realdata_file(f"{folder}/P2ILF22_patient1_12.jpg"))
    small = resize_mask(truth, (416, 320))
    res = postprocess(small, image, out_shape=truth.shape, options=PostprocessOptions(out_thickness=12))
    assert res.dilated.shape == truth.shape
    for cls in LANDMARK_CLASSES:
        assert dice(res.dilated == cls, truth == cls) > 0.8
        assert 1 <= len(res.polylines[cls]) <= 3  # clean curves, not fragments
