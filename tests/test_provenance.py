"""Provenance on every saved result (issue 15): each kind of result is saved
once the way users and commands save it, and the record read back from the
file (``read_provenance``: TIFF description, PNG text chunk, folder
``provenance.json``, JSON key or ``.provenance.json`` sidecar) must name the
source video and its SHA-256, the source frames, the model and its hash
where a model made it, the prompts, and the package version."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from surgseg_core import __version__
from surgseg_core.provenance import build_provenance, file_sha256, read_provenance, sidecar_path, video_identity

from _video_factory import write_video

T, H, W = 6, 48, 64


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGSEG_HASH_CACHE", str(tmp_path / "hash-cache.json"))


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", T, width=W, height=H, fps=10)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(256))
    return path


def _model_run(clip, weights) -> dict:
    """A layer's record of the model run that made it (what widgets store)."""
    return {"method": "sam2", "model": "demo-sam2", "variant": "plain", "checkpoint": str(weights),
            "checkpoint_sha256": _sha(weights), "prompts": [{"frame": 0, "obj_id": 1, "box": [1, 2, 30, 40]}],
            "source_video": str(clip)}


def _check(prov: dict, clip: Path, frames, *, weights: Path | None = None, result: str | None = None) -> None:
    assert prov["source_video"] == str(Path(clip).absolute())
    assert prov["source_video_sha256"] == _sha(clip)
    assert prov["frames"] == list(frames)
    assert prov["surgseg_version"] == __version__
    if result is not None:
        assert prov["result"] == result
    if weights is not None:
        assert prov["model_sha256"] == _sha(weights)
        assert prov["model_name"]


# ------------------------------------------------------------------ the builder
def test_video_hash_is_cached_by_size_and_mtime(clip, monkeypatch):
    from surgseg_core import provenance
    from surgseg_core.weights import hashing

    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    first = video_identity(clip)
    assert first["source_video_sha256"] == _sha(clip) and first["source_video_size"] == clip.stat().st_size
    provenance._MEMORY.clear()  # a new process: the on-disk cache answers
    assert file_sha256(clip) == _sha(clip)
    assert len(calls) == 1  # the video was read once
    with open(clip, "ab") as fh:  # the file changes: hashed again
        fh.write(b"\0")
    assert file_sha256(clip) == _sha(clip) != first["source_video_sha256"]
    assert len(calls) == 2


def test_frame_folder_hash_changes_with_any_frame(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i:04d}.png")
    before = video_identity(folder)["source_video_sha256"]
    assert before and video_identity(folder)["source_video_sha256"] == before
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(folder / "0001.png")
    assert video_identity(folder)["source_video_sha256"] != before


# ------------------------------------------------------- napari: File > Save Layers
def test_saved_labels_tiff_png_folder_and_points_csv_from_napari_layers(tmp_path, clip, weights):
    """A result layer on frames 4, 6, 8, ... of the video (ranged, stride 2),
    saved with the plugin's writers, reopened and saved again."""
    pytest.importorskip("napari")
    from napari.layers import Labels, Points

    from napari_surgseg._reader import get_reader
    from napari_surgseg._writer import write_labels_png, write_labels_tiff, write_points_csv

    data = np.zeros((3, H, W), np.uint8)
    data[1, 5:9, 5:9] = 2
    meta = {"provenance": _model_run(clip, weights), "source_video": str(clip)}
    labels = Labels(data, scale=(2, 1, 1), translate=(4, 0, 0), metadata=meta, name="masks")
    (tif,) = write_labels_tiff(str(tmp_path / "masks.tif"), labels.data, labels._get_state())
    (png,) = write_labels_png(str(tmp_path / "masks_png"), labels.data, labels._get_state())
    for path in (tif, png):
        prov = read_provenance(path)
        _check(prov, clip, [4, 6, 8], weights=weights, result="labels")
        assert prov["prompts"] == meta["provenance"]["prompts"] and prov["frame_map"] == {"start": 4.0, "step": 2.0}
        assert prov["model_name"] == "demo-sam2" and prov["model_variant"] == "plain"
    assert sorted(p.name for p in Path(png).iterdir()) == ["000000.png", "000001.png", "000002.png", "provenance.json"]

    # reopened from disk: back on frames 4, 6, 8 of the video; saved again, the record stays
    for path in (tif, png):
        (layer_data,) = get_reader(path)(path)
        again = Labels(layer_data[0], **{k: v for k, v in layer_data[1].items() if k != "name"}, name="reopened")
        assert tuple(again.scale) == (2, 1, 1) and tuple(again.translate) == (4, 0, 0)
        (tif2,) = write_labels_tiff(str(tmp_path / "again.tif"), again.data, again._get_state())
        _check(read_provenance(tif2), clip, [4, 6, 8], weights=weights)

    points = Points(np.array([[0, 10, 20], [2, 11, 21]], float), scale=(2, 1, 1), translate=(4, 0, 0),
                    metadata=meta, name="clicks")
    (csv,) = write_points_csv(str(tmp_path / "clicks.csv"), points.data, points._get_state())
    assert sidecar_path(csv).is_file()
    _check(read_provenance(csv), clip, [4, 8], weights=weights, result="points")
    (layer_data,) = get_reader(csv)(csv)
    assert layer_data[1]["scale"] == (2, 1, 1) and layer_data[1]["translate"] == (4, 0, 0)


# ------------------------------------------------------------------ autosave
def test_autosave_snapshot_and_manifest_carry_provenance(tmp_path, clip, weights):
    from surgseg_core.io.autosave import list_snapshots, save_layer_snapshot

    folder = tmp_path / "autosave"
    labels = np.zeros((3, H, W), np.uint8)
    meta = {"provenance": _model_run(clip, weights)}
    kwargs = {"scale": [2.0, 1.0, 1.0], "translate": [4.0, 0.0, 0.0], "axis_labels": ["t", "y", "x"]}
    path = save_layer_snapshot(folder, "masks", "labels", labels, source=clip, metadata=meta, layer_kwargs=kwargs)
    save_layer_snapshot(folder, "clicks", "points", np.array([[1, 5, 5]], float), source=clip, metadata=meta,
                        layer_kwargs=kwargs)
    entries = {e["name"]: e for e in list_snapshots(folder)}
    _check(entries["masks"]["provenance"], clip, [4, 6, 8], weights=weights, result="autosave:labels")
    _check(read_provenance(path), clip, [4, 6, 8], weights=weights)
    _check(entries["clicks"]["provenance"], clip, [6], weights=weights, result="autosave:points")


# ------------------------------------------------------------------ overlay video
def test_overlay_mp4_sidecar_names_video_labels_and_model(tmp_path, clip, weights):
    from surgseg_core.io import open_video
    from surgseg_core.io.export import export_overlay_video, write_labels_tiff

    labels = write_labels_tiff(np.zeros((T, H, W), np.uint8), tmp_path / "l.tif")
    with open_video(clip) as src:
        out = export_overlay_video(src, tmp_path / "overlay.mp4", labels=labels, provenance=_model_run(clip, weights))
    prov = read_provenance(out)
    _check(prov, clip, range(T), weights=weights, result="overlay")
    assert prov["drawn"]["labels"] == {"path": str(labels.absolute()), "sha256": _sha(labels)}
    # a ranged, strided video: the frames are the source frames
    with open_video(clip, start=1, stop=6, step=2) as src:
        out = export_overlay_video(src, tmp_path / "ranged.mp4")
    _check(read_provenance(out), clip, [1, 3, 5], result="overlay")
    assert read_provenance(out)["model_name"] is None  # no model drew it


# ------------------------------------------------------------------ curves
def test_liver_curves_json_csv_xml_carry_provenance(tmp_path, clip, weights):
    from surgseg_core.methods.liver.export import write_landmarks_csv, write_landmarks_json, write_p2ilf_xml_frames

    curves = {0: {1: [np.array([[1.0, 2.0], [3.0, 4.0]])]}, 2: {2: [np.array([[5.0, 6.0], [7.0, 8.0]])]}}
    prov = build_provenance(base={"method": "liver", "checkpoint": str(weights), "checkpoint_sha256": _sha(weights)},
                            result="curves", source=clip, frames=[0, 2])
    _check(read_provenance(write_landmarks_json(tmp_path / "c.json", curves, (W, H), prov)), clip, [0, 2],
           weights=weights, result="curves")
    _check(read_provenance(write_landmarks_csv(tmp_path / "c.csv", curves, prov)), clip, [0, 2], weights=weights)
    xmls = write_p2ilf_xml_frames(tmp_path / "xml", curves, provenance=prov)
    assert [read_provenance(p)["frames"] for p in xmls] == [[0], [2]]  # each file its own frame
    _check(read_provenance(xmls[1]), clip, [2], weights=weights)


def test_liver_widget_export_records_the_video_frames_and_model(make_napari_viewer, tmp_path, clip, weights):
    """Liver landmarks > Export JSON / CSV of curves on a ranged video layer."""
    pytest.importorskip("napari")
    from napari_surgseg.widgets.base import add_shapes_result, set_provenance
    from napari_surgseg.widgets.liver import LiverLandmarksWidget

    viewer = make_napari_viewer()
    (video,) = viewer.open(str(clip), plugin="napari-surgseg")
    video.scale, video.translate = (2, 1, 1), (1, 0, 0)  # frames 1, 3, 5 of the clip as a ranged opening shows them
    widget = LiverLandmarksWidget(viewer)
    shapes = add_shapes_result(viewer, video, "curves", features={"class_id": np.array([], int)})
    shapes.add_paths([np.array([[1, 5, 5], [1, 9, 9]], float)])
    shapes.features = {"class_id": np.array([1])}
    set_provenance(shapes, "liver", {"checkpoint": str(weights), "checkpoint_sha256": _sha(weights)})
    widget.shapes_layer, widget._source = shapes, video
    for fmt in ("json", "csv"):
        (path,) = widget.export(tmp_path / f"curves.{fmt}", fmt)
        _check(read_provenance(path), clip, [3], weights=weights, result="curves")


# ------------------------------------------------------------------ predictions
def test_sam2_track_provenance_json_has_video_frames_model_prompts(tmp_path, clip):
    from surgseg_core.sam2_engine.track import track_video

    box = {"frame": 1, "obj_id": 1, "box": [10, 8, 50, 40]}
    track_video(str(clip), [box], out_dir=tmp_path / "masks", frame_range=(1, 4), direction="forward")
    prov = read_provenance(tmp_path / "masks")
    _check(prov, clip, [1, 2, 3, 4], result="masks")
    assert prov["model_name"] and "model_sha256" in prov  # random tiny: no weights file, hash None
    assert prov["prompts"] and prov["prompts"][0]["frame"] == 1


def test_tools_predictions_csv_and_json(tmp_path, clip, weights):
    from surgseg_core.methods.tools.predict import TINY_RANDOM_CONFIG, load_tools_model, predict_inputs

    small = {**TINY_RANDOM_CONFIG, "input_width": 32, "input_height": 32, "threshold": 0.2, "use_prior": False}
    model, cfg, provider = load_tools_model(None, device="cpu", config=small)
    cfg = {**cfg, "checkpoint": str(weights)}
    written = predict_inputs(model, [clip], tmp_path / "preds", cfg, provider=provider)
    assert sorted(Path(p).suffix for p in written) == [".csv", ".json"]
    for path in written:
        _check(read_provenance(path), clip, range(T), weights=weights, result="prediction:tools")


def test_rpsam2_predicted_masks_carry_provenance_in_png_text(tmp_path, clip, weights):
    from surgseg_core.methods.rpsam2.clicks import load_click_model
    from surgseg_core.methods.rpsam2.predict import predict_clicks

    prompts = [{"frame": 2, "obj_id": 1, "points": [[20, 20]], "labels": [1]}]
    written = predict_clicks(load_click_model(None), [clip], tmp_path / "pseudo", prompts, checkpoint=str(weights))
    (mask,) = written
    prov = read_provenance(mask)
    _check(prov, clip, [2], weights=weights, result="prediction:rpsam2")
    assert prov["prompts"][0]["points"] == [[20, 20]]
    run = read_provenance(tmp_path / "pseudo" / "refined_points.json")
    assert run["inputs"][0]["source_video_sha256"] == _sha(clip) and run["model_sha256"] == _sha(weights)


def test_liver_predict_folder_landmarks_and_csv(tmp_path, clip, weights):
    import torch

    from surgseg_core.config import merge_config
    from surgseg_core.methods.liver.model import build_liver_model
    from surgseg_core.methods.liver.predict import LiverPredictor, predict_inputs
    from surgseg_core.methods.liver.spec import DEFAULT_CONFIG

    torch.manual_seed(0)
    arch = {"arch": "unet", "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3,
            "decoder_channels": [16, 8, 4]}
    cfg = merge_config(DEFAULT_CONFIG, {**arch, "input_width": 64, "input_height": 48})
    predictor = LiverPredictor(build_liver_model(**arch), cfg, checkpoint=str(weights))
    (dest,) = predict_inputs(predictor, [clip], tmp_path / "preds", cfg)
    for path in (dest, dest / "landmarks.json", dest / "landmarks.csv"):
        _check(read_provenance(path), clip, range(T), weights=weights, result="prediction:liver")


# ------------------------------------------------------------------ corrections dataset
def test_corrections_dataset_provenance(tmp_path, clip, weights):
    from surgseg_core.datasets import export_corrections
    from surgseg_core.io import open_video

    labels = np.zeros((T, H, W), np.uint8)
    labels[2, 5:9, 5:9] = 1
    with open_video(clip) as src:
        out = export_corrections(tmp_path / "ds", frames=src, labels=labels, frame_indices=[2],
                                 provenance={**_model_run(clip, weights), "frame_map": {"start": 10, "step": 3}})
    prov = read_provenance(out)
    _check(prov, clip, [16], weights=weights, result="dataset:corrections")
    (item,) = prov["items"].values()
    assert item["frame"] == 2 and item["source_frame"] == 16 and item["source_video_sha256"] == _sha(clip)
    assert json.loads((out / "provenance.json").read_text())["model_sha256"] == _sha(weights)


# ------------------------------------------------------------------ training curves, metrics, generic predictions
def test_training_curves_metrics_and_generic_predictions(tmp_path, capsys):
    import _toy_method  # noqa: F401  (registers "toy")
    from PIL import Image

    from surgseg_core.cli.main import main

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(3):
        img = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(data / "images" / f"f{i}.png")
        Image.fromarray((img[..., 0] > img[..., 1]).astype(np.uint8)).save(data / "masks" / f"f{i}.png")
    run = tmp_path / "run"
    assert main(["train", "toy", "--set", "epochs=1", "--run-dir", str(run), "--device", "cpu"]) == 0
    curves = read_provenance(run / "metrics.jsonl")
    assert curves["result"] == "training curves" and curves["model_name"] == "toy"
    assert curves["options"]["epochs"] == 1 and curves["surgseg_version"] == __version__

    best = run / "checkpoints" / "best.pt"
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "toy", "--checkpoint", str(best), "--data", str(data), "--out", str(out)]) == 0
    metrics = read_provenance(out)
    assert metrics["model_sha256"] == _sha(best) and metrics["model_checkpoint"] == str(best)
    assert metrics["data"]["path"] == str(data.absolute()) and metrics["data"]["files"] == 6

    preds = tmp_path / "preds"
    assert main(["predict", "toy", "--checkpoint", str(best), str(data / "images"), "--out", str(preds)]) == 0
    capsys.readouterr()
    # the records are in the PNGs (no sidecars); surgseg_predict.json is the run's completion marker
    assert sorted(p.name for p in preds.iterdir()) == ["f0_mask.png", "f1_mask.png", "f2_mask.png",
                                                       "surgseg_predict.json"]
    prov = read_provenance(preds / "f1_mask.png")
    assert prov["result"] == "prediction:toy" and prov["model_sha256"] == _sha(best)
    assert prov["source_video"] == str((data / "images").absolute()) and prov["source_video_sha256"]
    assert prov["surgseg_version"] == __version__


def test_cli_label_conversion_and_overlay_keep_the_labels_provenance(tmp_path, clip, weights, capsys):
    """`surgseg export labels` (TIFF -> PNG folder) and `surgseg export overlay
    --labels masks.tif`: the model that made the labels stays on record."""
    from surgseg_core.cli.main import main
    from surgseg_core.io.export import write_labels_tiff

    prov = build_provenance(base=_model_run(clip, weights), result="labels", source=clip, frames=range(T))
    tif = write_labels_tiff(np.zeros((T, H, W), np.uint8), tmp_path / "masks.tif", provenance=prov)
    assert main(["export", "labels", str(tif), "--out", str(tmp_path / "png")]) == 0
    converted = read_provenance(tmp_path / "png")
    _check(converted, clip, range(T), weights=weights, result="labels")
    assert converted["converted_from"] == str(tif.absolute())
    assert main(["export", "overlay", str(clip), "--labels", str(tif), "--out", str(tmp_path / "o.mp4")]) == 0
    _check(read_provenance(tmp_path / "o.mp4"), clip, range(T), weights=weights, result="overlay")
    capsys.readouterr()


def test_tool_annotation_corrections_record_each_video(tmp_path, clip, weights):
    """'Use as correction' (Tool landmarks) adds frames of a video to a
    training annotation file: the sidecar keeps each video's record and
    frames, joined over several writes."""
    from surgseg_core.methods.tools.annotations import read_annotations, records_from_points, replace_frames

    path = tmp_path / "tool_annotations.csv"
    for frame in (1, 4):
        prov = build_provenance(base=_model_run(clip, weights), result="tool annotations", source=clip, frames=[frame])
        records = records_from_points("clip.mp4", frame, [("tip", 1, 10.0, 12.0)], action="grasp")
        replace_frames(path, records, provenance=prov)
    assert len(read_annotations(path)) == 2
    doc = read_provenance(path)
    assert doc["frames"] == [1, 4] and doc["result"] == "tool annotations" and doc["surgseg_version"] == __version__
    _check(doc["videos"]["clip.mp4"], clip, [1, 4], weights=weights)


def test_a_sidecar_of_an_earlier_version_of_its_file_is_not_taken_for_the_new_one(tmp_path):
    """A file and its .provenance.json are two writes: a kill between them leaves
    the new file beside the earlier file's record. The record carries the file's
    size and mtime, and a record that no longer fits is refused with a warning."""
    from surgseg_core.io.points_csv import write_points_csv
    from surgseg_core.provenance import read_provenance

    path = tmp_path / "points.csv"
    write_points_csv(np.array([[0, 10.0, 20.0]]), path, provenance={"result": "points", "source_video": "a.mp4"})
    assert read_provenance(path)["source_video"] == "a.mp4"
    # the new version written, killed before its sidecar: the old record stays on disk
    write_points_csv(np.array([[0, 10.0, 20.0], [1, 11.0, 21.0]]), path)
    with pytest.warns(UserWarning, match="describes an earlier version of points.csv"):
        assert read_provenance(path) == {}
