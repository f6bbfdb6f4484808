"""image_mask dataset reader, corrections export and uncertainty ranking."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import _toy_method  # noqa: F401  (registers "toy")
from surgseg_core.datasets import (
    ImageMaskFolder, default_corrected_frames, export_corrections, rank_frames_by_uncertainty,
)
from surgseg_core.datasets.uncertainty import confidence_uncertainty, mask_iou
from surgseg_core.errors import DatasetError
from surgseg_core.training.trainer import train


def _pair(root, stem, img_size=(8, 6), mask_size=None, mask_value=1):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = img_size
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(root / "images" / f"{stem}.jpg")
    mw, mh = mask_size or img_size
    m = np.zeros((mh, mw), np.uint8)
    m[: mh // 2] = mask_value
    Image.fromarray(m).save(root / "masks" / f"{stem}.png")


def test_image_mask_folder_reads_and_resizes(tmp_path):
    _pair(tmp_path, "a", mask_value=3)
    _pair(tmp_path, "b")
    ds = ImageMaskFolder(tmp_path)
    assert len(ds) == 2 and ds.names == ["a", "b"]
    item = ds[0]
    assert item["image"].shape == (3, 6, 8) and item["image"].dtype == torch.float32
    assert float(item["image"].max()) == pytest.approx(200 / 255, abs=2e-2)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (6, 8)
    assert set(item["mask"].unique().tolist()) == {0, 3} and item["name"] == "a"
    small = ImageMaskFolder(tmp_path, size=(4, 3))[0]
    assert small["image"].shape == (3, 3, 4) and set(small["mask"].unique().tolist()) <= {0, 3}


def test_layout_errors_say_what_was_expected_and_found(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        ImageMaskFolder(tmp_path / "nope")
    (tmp_path / "frames").mkdir()
    with pytest.raises(DatasetError, match=r"missing images/ and masks/.*expected root/images.*found: frames/"):
        ImageMaskFolder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="is empty: no images"):
        ImageMaskFolder(tmp_path)
    _pair(tmp_path, "a")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "b.png")
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no mask.*b.png needs b.png"):
        ImageMaskFolder(tmp_path)
    _pair(tmp_path, "b", img_size=(8, 6), mask_size=(8, 5))
    with pytest.raises(DatasetError, match="image b.jpg is 8x6 but its mask b.png is 8x5"):
        ImageMaskFolder(tmp_path)


def test_colour_mask_rejected(tmp_path):
    _pair(tmp_path, "a")
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError, match="colour image.*single-channel index"):
        ImageMaskFolder(tmp_path)[0]


def _video(t=6, h=12, w=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((t, h, w, 3)) * 255).astype(np.uint8)


def test_default_corrected_frames():
    labels = np.zeros((5, 4, 4), np.uint8)
    model = labels.copy()
    labels[1, 0, 0] = 1
    model[1, 0, 0] = 1  # same as the model: not a correction
    labels[3, 1, 1] = 2
    assert default_corrected_frames(labels, 5, model) == [3]
    assert default_corrected_frames(labels, 5) == [1, 3]
    assert default_corrected_frames(labels, 5, points=[[4, 1.0, 2.0]]) == [1, 3, 4]


def test_export_corrections_round_trip_and_trains(tmp_path):
    frames = _video()
    red = (frames[..., 0] > frames[..., 1]) & (frames[..., 0] > frames[..., 2])
    labels = red.astype(np.uint8)
    model_out = labels.copy()
    model_out[[0, 5]] = 0  # the user's labels differ from the model's on frames 0 and 5
    out = export_corrections(
        tmp_path / "ds", frames=frames, labels=labels, model_labels=model_out,
        points=[[0, 2.0, 3.0], [5, 4.5, 1.25], [2, 1.0, 1.0]], point_classes=["a", "b", "c"],
        curves={5: {1: [[[0, 0], [3, 4]]]}},
        provenance={"source_video": "/videos/case 01.mp4", "who": "tester", "when": "2026-01-01T00:00:00"},
    )
    ds = ImageMaskFolder(out)  # frames 0 and 5 (labels changed) and 2 (a point was placed)
    assert ds.names == ["case_01_f000000", "case_01_f000002", "case_01_f000005"]
    np.testing.assert_array_equal(ds[2]["mask"].numpy(), labels[5])
    np.testing.assert_allclose(ds[2]["image"].permute(1, 2, 0).numpy() * 255, frames[5], atol=0.5)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["format"] == "image_mask"
    assert prov["items"]["case_01_f000005"] == {
        "frame": 5, "source_frame": 5, "source_video": "/videos/case 01.mp4", "who": "tester",
        "when": "2026-01-01T00:00:00",
        "included_because": "labels differ from the model output; has points (no edit record of the points "
                            "layer); has curves"}
    rows = list(csv.DictReader(open(out / "points.csv")))
    assert [(r["stem"], r["y"], r["x"], r["class"]) for r in rows] == [
        ("case_01_f000000", "2.000", "3.000", "a"), ("case_01_f000005", "4.500", "1.250", "b"),
        ("case_01_f000002", "1.000", "1.000", "c")]
    assert json.loads((out / "curves.json").read_text()) == {"case_01_f000005": {"1": [[[0, 0], [3, 4]]]}}
    # A second export adds to the same dataset.
    export_corrections(out, frames=frames, labels={2: labels[2]}, provenance={"source_video": "other.mp4"})
    assert len(ImageMaskFolder(out)) == 4
    # The trainer reads the export: one epoch on it.
    result = train("toy", {"device": "cpu", "epochs": 1, "batch_size": 2, "data_root": str(out)},
                   run_dir=tmp_path / "run")
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert result.history[0]["monitor"] == "train_loss"  # no val_root: selected on the training loss


def test_export_errors(tmp_path):
    frames = _video(t=3)
    with pytest.raises(DatasetError, match="nothing to export"):
        export_corrections(tmp_path, frames=frames, labels=np.zeros((3, 12, 12), np.uint8))
    with pytest.raises(DatasetError, match="labels are 5x5 but the frame is 12x12"):
        export_corrections(tmp_path, frames=frames, labels={1: np.ones((5, 5), np.uint8)})
    with pytest.raises(DatasetError, match="outside the video"):
        export_corrections(tmp_path, frames=frames, labels=None, frame_indices=[7])


def test_export_liver_rasterizes_curves(tmp_path):
    pytest.importorskip("surgseg_core.methods.liver.rasterize")
    frames = _video(t=2, h=20, w=20)
    out = export_corrections(tmp_path, frames=frames, curves={1: {1: [np.array([[2.0, 10.0], [17.0, 10.0]])]}},
                             method="liver", line_thickness=3)
    mask = ImageMaskFolder(out)[0]["mask"].numpy()
    assert mask[10, 2:18].tolist() == [1] * 16 and mask[2, 10] == 0


def test_uncertainty_ranking_hand_values():
    # 1 - mean(max(p, 1-p)) per frame.
    probs = np.array([np.full((2, 2), 0.9), np.full((2, 2), 0.5), np.array([[0.2, 0.8], [0.6, 1.0]])])
    assert confidence_uncertainty(probs[2]) == pytest.approx(1 - (0.8 + 0.8 + 0.6 + 1.0) / 4)
    ranked = rank_frames_by_uncertainty(probs, k=2)
    assert [t for t, _ in ranked] == [1, 2]
    assert ranked[0][1] == pytest.approx(0.5)
    class_probs = np.stack([np.stack([np.full((2, 2), 0.7), np.full((2, 2), 0.3)])] * 2)
    assert rank_frames_by_uncertainty(class_probs, k=1)[0][1] == pytest.approx(0.3)
    # Forward/backward disagreement: 1 - IoU.
    a = np.zeros((3, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2] = 1
    b[0, :1] = 1  # IoU 4/8
    a[2, :, :2] = 1
    b[2, :, 2:] = 1  # IoU 0
    ranked = rank_frames_by_uncertainty(a, k=3, other_masks=b)
    assert ranked == [(2, 1.0), (0, 0.5), (1, 0.0)]
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert rank_frames_by_uncertainty([0.1, 0.7, 0.3], k=2) == [(1, 0.7), (2, 0.3)]
    with pytest.raises(DatasetError):
        rank_frames_by_uncertainty(a, k=1, other_masks=b[:2])
