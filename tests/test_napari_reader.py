"""The npe2 reader, writers and sample data of the plugin, in a real viewer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from _video_factory import frame_number, pattern_frame, write_video
from conftest import realdata_file

from napari_surgseg._reader import get_reader
from surgseg_core.errors import VideoError
from surgseg_core.io import FrameSource
from surgseg_core.io.export import read_labels_tiff, read_png_masks, read_points_csv, write_labels_tiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-surgseg"


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4", 30, width=64, height=48, fps=10)


def _frames_folder(folder: Path, n=6, w=64, h=48) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(pattern_frame(i, w, h)).save(folder / f"{i:06d}.png")
    return folder


def _assert_lazy_video_layer(layer, shape):
    assert layer.rgb
    assert tuple(layer.axis_labels) == ("t", "y", "x")
    assert isinstance(layer.data, FrameSource) and not isinstance(layer.data, np.ndarray)
    assert layer.data.shape == shape
    # napari showed one frame: it decoded that frame and the read-ahead window in the
    # direction of play (PLAYBACK_PREFETCH), never the whole of a longer video
    from napari_surgseg.widgets.base.layers import PLAYBACK_PREFETCH

    assert layer.data._prefetch == PLAYBACK_PREFETCH
    assert len(layer.data.cache) <= 2 * (1 + PLAYBACK_PREFETCH)
    if shape[0] > 2 * (1 + PLAYBACK_PREFETCH):
        assert len(layer.data.cache) < shape[0]


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((5, 8, 8), np.uint16))  # e.g. a microscopy stack
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")  # not a points table
    assert get_reader(str(tmp_path / "table.csv")) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "grey.tif")) is None
    assert get_reader([str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]) is None


def test_broken_video_raises_a_clear_video_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    reader = get_reader(str(bad))
    assert reader is not None  # our extension: we answer, with a clear error
    with pytest.raises(VideoError, match="broken.mp4"):
        reader(str(bad))


def test_reader_opens_video_as_lazy_rgb_layer_with_metadata(make_napari_viewer, clip):
    viewer = make_napari_viewer()
    layers = viewer.open(str(clip), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "clip"
    _assert_lazy_video_layer(layer, (30, 48, 64, 3))
    md = layer.metadata
    assert md["fps"] == pytest.approx(10)
    assert md["duration"] == pytest.approx(3.0, abs=0.11)
    assert md["codec"] == "h264" and md["n_frames"] == 30
    assert Path(md["source_path"]) == clip
    assert len(md["timestamps"]) == 30
    viewer.dims.set_current_step(0, 7)
    assert frame_number(np.asarray(layer._slice.image.raw)) == 7  # what napari displays is frame 7


def test_reader_opens_frame_folders_and_rgb_tiff_stacks(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    folder = _frames_folder(tmp_path / "frames")
    (layer,) = viewer.open(str(folder), plugin=PLUGIN)
    _assert_lazy_video_layer(layer, (6, 48, 64, 3))
    assert frame_number(layer.data[4]) == 4 and layer.name == "frames"

    stack = np.stack([pattern_frame(i, 64, 48) for i in range(5)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb")
    (layer,) = viewer.open(str(tmp_path / "stack.tif"), plugin=PLUGIN)
    _assert_lazy_video_layer(layer, (5, 48, 64, 3))
    np.testing.assert_array_equal(layer.data[3], stack[3])


def test_saved_labels_open_again_as_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lab = np.random.default_rng(0).integers(0, 4, (3, 20, 30)).astype(np.uint8)
    write_labels_tiff(lab, tmp_path / "masks.tif")
    (layer,) = viewer.open(str(tmp_path / "masks.tif"), plugin=PLUGIN)
    assert layer._type_string == "labels"
    np.testing.assert_array_equal(layer.data, lab)
    masks = tmp_path / "masks_png"
    masks.mkdir()
    for i, m in enumerate(lab):
        Image.fromarray(m).save(masks / f"{i:06d}.png")
    (layer,) = viewer.open(str(masks), plugin=PLUGIN)
    assert layer._type_string == "labels"
    np.testing.assert_array_equal(layer.data, lab)


def test_a_long_saved_label_stack_opens_memory_mapped(make_napari_viewer, tmp_path, monkeypatch):
    """A long video's saved masks (GBs) are not read into RAM: the layer is
    a memory-mapped copy, equal to the file, that the brush paints into."""
    from surgseg_core.io import label_stack

    monkeypatch.setattr(label_stack, "DEFAULT_MAX_RAM_MB", 0)  # this stack counts as too big for RAM
    monkeypatch.setenv("SURGSEG_LABEL_STACK_DIR", str(tmp_path / "stacks"))
    lab = np.random.default_rng(1).integers(0, 4, (6, 20, 30)).astype(np.uint8)
    write_labels_tiff(lab, tmp_path / "masks.tif")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "masks.tif"), plugin=PLUGIN)
    assert isinstance(layer.data, np.memmap) and layer._type_string == "labels"
    np.testing.assert_array_equal(layer.data, lab)
    layer.paint((2, 5, 5), 9)
    assert layer.data[2, 5, 5] == 9 and (read_labels_tiff(tmp_path / "masks.tif") == lab).all()
    masks = tmp_path / "masks_png"  # the same as a folder of numbered PNG masks
    masks.mkdir()
    for i, m in enumerate(lab):
        Image.fromarray(m).save(masks / f"{i:06d}.png")
    (layer,) = viewer.open(str(masks), plugin=PLUGIN)
    assert isinstance(layer.data, np.memmap)
    np.testing.assert_array_equal(layer.data, lab)


def test_writers_round_trip_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lab = np.zeros((4, 20, 30), np.int32)
    lab[1, 2:6, 3:9] = 7
    lab[3, 10:, :5] = 300
    labels = viewer.add_labels(lab, name="tools")
    labels.save(str(tmp_path / "tools.tif"), plugin=PLUGIN)
    np.testing.assert_array_equal(read_labels_tiff(tmp_path / "tools.tif"), lab)
    labels.save(str(tmp_path / "tools_png"), plugin=f"{PLUGIN}.write_labels_png")
    back = read_png_masks(tmp_path / "tools_png")
    assert back.dtype == np.uint16  # ids above 255
    np.testing.assert_array_equal(back, lab)

    pts = np.array([[0, 5.5, 7.25], [2, 10, 20]])
    points = viewer.add_points(pts, features={"label": [1, 2]}, name="tips")
    points.save(str(tmp_path / "tips.csv"), plugin=PLUGIN)
    assert (tmp_path / "tips.csv").read_text().splitlines()[0] == "frame,x,y,label"
    table = read_points_csv(tmp_path / "tips.csv")
    np.testing.assert_array_equal(table.data, pts)
    np.testing.assert_array_equal(table.features["label"], [1, 2])
    (reopened,) = viewer.open(str(tmp_path / "tips.csv"), plugin=PLUGIN)  # and back into napari
    assert reopened._type_string == "points"
    np.testing.assert_array_equal(reopened.data, pts)
    np.testing.assert_array_equal(reopened.features["label"], [1, 2])


def test_writer_reports_wrong_dimensions(tmp_path):
    from napari_surgseg._writer import write_labels_tiff as napari_write
    from surgseg_core.errors import DatasetError

    with pytest.raises(DatasetError, match="got shape"):
        napari_write(str(tmp_path / "x.tif"), np.zeros((2, 2, 4, 4), np.uint8), {})
    assert not (tmp_path / "x.tif").exists()


def test_manifest_is_valid_and_our_commands_import():
    import importlib

    import npe2

    res = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    ours = {"get_reader", "write_labels_tiff", "write_labels_png", "write_points_csv", "sample_clip",
            "sample_liver", "video_loader", "export_overlay"}  # fmt: skip
    commands = {c.id.split(".")[-1]: c.python_name for c in manifest.contributions.commands}
    for name in ours:
        module, attr = commands[name].split(":")
        assert callable(getattr(importlib.import_module(module), attr)), commands[name]


@pytest.mark.realdata
def test_reader_opens_a_real_clip_lazily(make_napari_viewer):
    path = realdata_file("lapchole_clip_rvimlab/endo.mp4")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    _assert_lazy_video_layer(layer, (250, 720, 1280, 3))
    assert layer.metadata["fps"] == pytest.approx(25)
    assert layer.metadata["codec"] == "h264"
    viewer.dims.set_current_step(0, 120)
    shown = np.asarray(layer._slice.image.raw)
    assert shown.shape == (720, 1280, 3) and shown.mean() > 5  # real content, not a black frame


def test_sample_data_layers(make_napari_viewer, tmp_path, monkeypatch):
    """The sample functions give a lazy video plus ground truth; without a
    checkout copy they regenerate into the cache folder."""
    from surgseg_core.synth import sample
    from surgseg_core.synth.writer import read_tool_landmarks, write_liver_dataset, write_synthetic_clip

    monkeypatch.setattr(sample, "candidates", lambda name: [tmp_path / "nowhere" / name])
    monkeypatch.setattr(sample, "cache_dir", lambda: tmp_path / "cache")
    # small clips keep the test quick; the real defaults are used by users
    small = {
        sample.CLIP_DIR: lambda f: write_synthetic_clip(f, seed=2, n_frames=10, height=64, width=80),
        sample.LIVER_DIR: lambda f: write_liver_dataset(f, seed=1, n_frames=3, height=64, width=80),
    }
    monkeypatch.setattr(sample, "generate", lambda name, f: small[name](f))
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "synthetic_clip")
    kinds = [ly._type_string for ly in layers]
    assert kinds == ["image", "labels", "labels", "points", "points"]
    video, anatomy, instruments, anchors, tips = layers
    _assert_lazy_video_layer(video, (10, 64, 80, 3))
    assert anatomy.data.shape == instruments.data.shape == (10, 64, 80)
    assert instruments.data.max() >= 1 and anatomy.data.max() >= 1
    folder = tmp_path / "cache" / "synthetic_clip"
    truth = read_tool_landmarks(folder / "tool_landmarks.csv")
    expected = np.array([(f, lm["tip"][1], lm["tip"][0]) for f in sorted(truth) for lm in truth[f]])
    assert len(expected) > 0
    np.testing.assert_allclose(tips.data, expected)  # (t, y, x) from the CSV's x, y
    assert list(tips.features["instrument_id"]) == [lm["instrument_id"] for f in sorted(truth) for lm in truth[f]]
    tip_ids = instruments.data[tuple(np.round(tips.data).astype(int).T)]
    np.testing.assert_array_equal(tip_ids, tips.features["instrument_id"])  # tips lie on their instrument
    assert (tmp_path / "cache" / "synthetic_clip" / "video.mp4").is_file()

    layers = viewer.open_sample(PLUGIN, "synthetic_liver")
    assert [ly._type_string for ly in layers][:2] == ["image", "labels"]
    assert layers[1].data.shape == (3, 64, 80) and set(np.unique(layers[1].data)) <= {0, 1, 2, 3}


def test_sample_clip_from_the_repository_is_consistent():
    from conftest import SAMPLE_DATA

    from napari_surgseg._sample_data import sample_clip

    if not (SAMPLE_DATA / "synthetic_clip" / "meta.json").is_file():
        pytest.skip(f"no committed sample data at {SAMPLE_DATA}")
    video, anatomy, instruments, anchors, tips = sample_clip()
    assert isinstance(video[0], FrameSource) and video[1]["rgb"]
    assert anatomy[0].shape == instruments[0].shape == video[0].shape[:3]
    # ground truth agrees with itself: every tip lies on its own instrument's mask
    t, y, x = np.round(tips[0]).astype(int).T
    np.testing.assert_array_equal(instruments[0][t, y, x], tips[1]["features"]["instrument_id"])
