"""Liver annotation readers, rasterisation, dataset discovery, flips and
exports (real P2ILF samples when ../shared/realdata is present)."""
import json

import numpy as np
import pytest

from conftest import realdata_file
from surgseg_core.errors import DatasetError
from surgseg_core.methods.liver import LIGAMENT, RIDGE, SILHOUETTE
from surgseg_core.methods.liver.data import LiverDataset, find_samples, load_mask
from surgseg_core.methods.liver.export import (
    read_landmarks_json,
    write_landmarks_csv,
    write_landmarks_json,
    write_p2ilf_xml,
)
from surgseg_core.methods.liver.rasterize import rasterize_curves
from surgseg_core.methods.liver.readers import (
    colour_labels_to_mask,
    read_annotation,
    read_l3d_json,
    read_p2ilf_json,
    read_p2ilf_xml,
)

P2ILF = "p2ilf_liver_landmarks"


def test_l3d_json_with_misspelt_ridge(tmp_path):
    ann = {
        "shapes": [
            {"label": "silhouette", "points": [[1, 2], [30, 4]]},
            {"label": "rigde", "points": [[5, 5], [10, 10], [20, 10]]},
            {"label": "Ligament", "points": [[7, 1], [7, 20]]},
            {"label": "tool", "points": [[0, 0], [1, 1]]},
        ],
        "imageWidth": 40, "imageHeight": 30, "imagePath": "img.png",
    }
    path = tmp_path / "img.json"
    path.write_text(json.dumps(ann))
    a = read_l3d_json(path)
    assert sorted(a.curves) == [SILHOUETTE, RIDGE, LIGAMENT]
    assert a.curves[RIDGE][0].tolist() == [[5, 5], [10, 10], [20, 10]]
    assert a.image_size == (40, 30)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="img.json"):
        read_l3d_json(path)


def test_rasterize_thickness_and_class_order():
    curves = {SILHOUETTE: [np.array([[2.0, 10.0], [40.0, 10.0]])], LIGAMENT: [np.array([[20.0, 0.0], [20.0, 25.0]])]}
    m = rasterize_curves(curves, (30, 50), 5)
    assert (m[:, 30] == SILHOUETTE).sum() == 5  # 5 px thick
    assert m[10, 20] == LIGAMENT  # the later class wins at crossings
    thin = rasterize_curves(curves, (30, 50), 1)
    assert (thin[:, 30] == SILHOUETTE).sum() == 1 and (thin[10, 2:41] > 0).all()


def test_p2ilf_xml_and_json_agree_on_real_sample():
    xml = read_p2ilf_xml(realdata_file(f"{P2ILF}/samplexmlprovided/patient2_1.xml"))
    js = read_p2ilf_json(realdata_file(f"{P2ILF}/samplexmlprovided/patient2_1.json"))
    ev = read_annotation(realdata_file(f"{P2ILF}/evaluation_GT/patient2_1_2D-contours.json"))
    assert [len(p) for p in xml.curves[RIDGE]] == [562, 653]
    assert [len(p) for p in xml.curves[SILHOUETTE]] == [578]
    assert [len(p) for p in xml.curves[LIGAMENT]] == [340]
    for other in (js, ev):
        for cls in (RIDGE, SILHOUETTE, LIGAMENT):
            assert all(np.allclose(a, b) for a, b in zip(xml.curves[cls], other.curves[cls]))
    mask = rasterize_curves(xml.curves, (1080, 1920), 12)
    assert set(np.unique(mask)) == {0, SILHOUETTE, RIDGE, LIGAMENT}


def test_colour_labels_real_gt_jpeg():
    import imageio.v3 as iio

    rgb = iio.imread(realdata_file(f"{P2ILF}/2D_imageLabel_metrics/image_labels_GT/P2ILF22_patient1_12_GT.jpg"))
    mask = colour_labels_to_mask(rgb)
    counts = np.bincount(mask.ravel(), minlength=4)
    assert (counts[1:] > 2000).all()  # all three landmarks found
    assert counts[1:].sum() < 0.05 * mask.size  # thin curves, not blocks of JPEG noise
    # the classes follow the colours: the red channel dominates ridge pixels, blue ligament ones
    assert (rgb[mask == RIDGE][:, 0].astype(int) - rgb[mask == RIDGE][:, 1]).mean() > 100
    assert (rgb[mask == LIGAMENT][:, 2].astype(int) - rgb[mask == LIGAMENT][:, 0]).mean() > 100
    assert (rgb[mask == SILHOUETTE][:, :2].min(1).astype(int) - rgb[mask == SILHOUETTE][:, 2]).mean() > 100


def test_colour_labels_survive_jpeg(tmp_path):
    import imageio.v3 as iio

    truth = rasterize_curves({
        SILHOUETTE: [np.array([[10.0, 60.0], [190.0, 70.0]])],
        RIDGE: [np.array([[20.0, 30.0], [180.0, 35.0]])],
        LIGAMENT: [np.array([[100.0, 5.0], [105.0, 50.0]])],
    }, (100, 200), 5)
    palette = np.array([[0, 0, 0], [255, 255, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    iio.imwrite(tmp_path / "gt.jpg", palette[truth], quality=75)
    mask = colour_labels_to_mask(iio.imread(tmp_path / "gt.jpg"))
    for cls in (SILHOUETTE, RIDGE, LIGAMENT):
        inter = ((mask == cls) & (truth == cls)).sum()
        union = ((mask == cls) | (truth == cls)).sum()
        assert inter / union > 0.8


def test_find_samples_layouts(tmp_path):
    import imageio.v3 as iio

    img = np.full((40, 60, 3), 90, np.uint8)
    (tmp_path / "p2ilf").mkdir()
    iio.imwrite(tmp_path / "p2ilf" / "a.png", img)
    write_p2ilf_xml(tmp_path / "p2ilf" / "a.xml", {RIDGE: [np.array([[5.0, 5.0], [50.0, 20.0]])]})
    samples = find_samples(tmp_path / "p2ilf")
    assert len(samples) == 1 and samples[0].kind == "curves"
    # curves drawn at the network size with the thickness scaled
    m = load_mask(samples[0], (40, 60), (120, 80), line_thickness=2)
    assert m.shape == (80, 120) and (m == RIDGE).any()
    with pytest.raises(DatasetError, match="no liver samples"):
        find_samples(tmp_path / "p2ilf", "generic")
    with pytest.raises(DatasetError, match="not found"):
        find_samples(tmp_path / "missing")


def test_images_without_masks_are_named_not_skipped_silently(tmp_path):
    import imageio.v3 as iio

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        iio.imwrite(tmp_path / "images" / f"f{i}.png", np.zeros((8, 8, 3), np.uint8))
    for i in (0, 2):
        iio.imwrite(tmp_path / "masks" / f"f{i}.png", np.zeros((8, 8), np.uint8))
    with pytest.warns(UserWarning, match=r"2 of 4 images without a mask are not used \(f1, f3\)"):
        samples = find_samples(tmp_path, "generic")
    assert [s.image.stem for s in samples] == ["f0", "f2"]


def test_find_samples_on_real_colour_labels():
    folder = realdata_file(f"{P2ILF}/2D_imageLabel_metrics/image_labels_GT")
    (s,) = find_samples(folder, "colour")
    assert s.image.name == "P2ILF22_patient1_12.jpg"
    ds = LiverDataset([s], (416, 320))
    image, mask = ds.load(0)
    assert image.shape == (320, 416, 3) and mask.shape == (320, 416)
    assert set(np.unique(mask)) == {0, 1, 2, 3}


def test_flips_apply_to_image_and_mask_together(tmp_path):
    import imageio.v3 as iio
    import torch

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((32, 64), np.uint8)
    mask[2:6, 3:20] = 1
    mask[20:30, 50:60] = 3
    image = np.stack([mask * 60] * 3, -1).astype(np.uint8)  # the image encodes its mask
    iio.imwrite(tmp_path / "images" / "a.png", image)
    iio.imwrite(tmp_path / "masks" / "a.png", mask)
    ds = LiverDataset(find_samples(tmp_path), (64, 32), flip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        item = ds[0]
        assert torch.equal((item["image"][0] * 255).round().long(), item["mask"] * 60)
        seen.add(item["mask"].numpy().tobytes())
    assert len(seen) == 4  # identity, h-flip, v-flip, both


def test_exports_round_trip(tmp_path):
    frames = {0: {SILHOUETTE: [np.array([[1.0, 2.0], [3.5, 4.25]])], RIDGE: [], LIGAMENT: []},
              7: {RIDGE: [np.array([[10.0, 11.0], [12.0, 13.0], [14.0, 15.0]])]}}
    write_landmarks_json(tmp_path / "l.json", frames, (100, 80), {"model": "x"})
    back = read_landmarks_json(tmp_path / "l.json")
    assert np.allclose(back[0][SILHOUETTE][0], frames[0][SILHOUETTE][0])
    assert np.allclose(back[7][RIDGE][0], frames[7][RIDGE][0])
    write_landmarks_csv(tmp_path / "l.csv", frames)
    rows = (tmp_path / "l.csv").read_text().splitlines()
    assert rows[0] == "frame,class_id,class_name,curve,point,x,y" and len(rows) == 1 + 2 + 3
    assert rows[-1] == "7,2,ridge,0,2,14.0,15.0"
    write_p2ilf_xml(tmp_path / "f.xml", frames[7])
    assert np.allclose(read_p2ilf_xml(tmp_path / "f.xml").curves[RIDGE][0], frames[7][RIDGE][0])


def _capsule_truth(shape, pts, thickness):
    """Pixels whose centre lies within thickness / 2 of the polyline (brute force)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    best = np.full(shape, np.inf)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(xx - x0 - t * dx, yy - y0 - t * dy))
    return best <= thickness / 2


def test_thick_polylines_match_exact_capsules():
    from surgseg_core.methods.liver.rasterize import draw_polyline

    rng = np.random.default_rng(0)
    for thickness, min_iou in ((5, 0.88), (12, 0.95), (12.5, 0.95)):
        ious = []
        for _ in range(10):
            pts = rng.uniform(5, 95, (5, 2))
            m = np.zeros((100, 110), np.uint8)
            draw_polyline(m, pts, 2, thickness)
            truth = _capsule_truth(m.shape, pts, thickness)
            assert set(np.unique(m)) <= {0, 2}
            ious.append((truth & (m > 0)).sum() / (truth | (m > 0)).sum())
        assert min(ious) >= min_iou, (thickness, ious)


def test_draw_polyline_on_views_and_other_dtypes():
    from surgseg_core.methods.liver.rasterize import draw_polyline

    pts = np.array([[2.0, 3.0], [20.0, 3.0]])
    ref = np.zeros((10, 30), np.uint8)
    draw_polyline(ref, pts, 3, 3)
    stack = np.zeros((2, 10, 30), np.int64)  # a label stack napari holds as int64
    draw_polyline(stack[1], pts, 3, 3)
    assert np.array_equal(stack[1], ref) and not stack[0].any()
    big = np.zeros((10, 60), np.uint8)
    view = big[:, ::2]  # not contiguous: drawn through a scratch copy, in place
    draw_polyline(view, pts, 3, 1)
    assert (big[3, 4:42:2] == 3).all() and big[:, 1::2].sum() == 0
    mask = np.zeros((10, 30), bool)
    draw_polyline(mask, pts, 1, 3)
    assert np.array_equal(mask, ref > 0)


def test_draw_polyline_survives_odd_coordinates():
    from surgseg_core.methods.liver.rasterize import draw_polyline

    m = np.zeros((20, 30), np.uint8)
    draw_polyline(m, np.array([[2.0, 5.0], [np.nan, 7.0], [25.0, 5.0]]), 1, 3)  # the NaN vertex is skipped
    assert (m[5, 3:25] == 1).all()
    far = np.zeros((20, 30), np.uint8)
    draw_polyline(far, np.array([[-1e12, 10.0], [1e12, 10.0]]), 2, 1)  # clamped, clipped to the image
    assert (far[10] == 2).all() and far.sum() == 2 * 30
