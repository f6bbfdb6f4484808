"""SAM2 tracking from prompts: the core function, ``surgseg track`` and the
"Track with SAM2" widget share one code path (``track_video``).

Models are randomly initialised surgseg_tiny SAM2 models (no weights can be
downloaded here). As in test_sam2_engine.py, the object-score head's output
bias is set to +10 so the random decoder says "object present" and the
masks are its (non-trivial, meaningless) logits; every test that reads
masks checks they are non-trivial.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from surgseg_core.errors import Cancelled, ConfigError
from surgseg_core.sam2_engine import StreamingSAM2, build_model
from surgseg_core.sam2_engine import build as build_module
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.track import normalize_prompts, prompts_from_points_table, track_video

T, H, W = 6, 64, 80


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(5, n_frames=T, height=H, width=W)
    return np.stack([clip.frame(i).image for i in range(T)])


def _present(model):
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


@pytest.fixture
def biased_build(monkeypatch):
    """Every model built by name gets the object-present bias."""
    real = build_module.build_model

    def build(*args, **kwargs):
        return _present(real(*args, **kwargs))

    monkeypatch.setattr(build_module, "build_model", build)


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    torch.set_num_threads(1)


def _read_pngs(folder):
    return {int(p.stem): np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _engine_labels(frames, prompts, **kw):
    """What StreamingSAM2 gives directly for the same prompts (reference)."""
    engine = StreamingSAM2(_present(build_model(TINY_CONFIG, seed=0)), frames)
    for p in normalize_prompts(prompts):
        engine.add_points(p["frame"], p["obj_id"], p["points"] or None, p["labels"] or None, box=p["box"])
    out = {}
    engine.propagate(lambda r: out.__setitem__(r.frame_idx, r.label_map()), **kw)
    return out


# ------------------------------------------------------------------ core
def test_track_box_writes_one_png_per_frame_in_range_and_says_random(frames, tmp_path, biased_build, caplog):
    prompts = [{"frame": 2, "obj_id": 3, "box": [10, 8, 50, 40]}]
    with caplog.at_level("WARNING"):
        summary = track_video(frames, prompts, frame_range=(1, 4), out_dir=tmp_path / "m", direction="both")
    assert "RANDOMLY INITIALISED" in caplog.text
    pngs = _read_pngs(tmp_path / "m")
    assert sorted(pngs) == [1, 2, 3, 4] and summary["frames_written"] == 4
    stack = np.stack(list(pngs.values()))
    assert stack.shape == (4, H, W) and stack.dtype == np.uint8
    assert set(np.unique(stack)) == {0, 3}, "masks must be non-trivial and carry the object id"
    ref = _engine_labels(frames, prompts, frame_range=(1, 4), direction="both")
    for t, labels in pngs.items():
        np.testing.assert_array_equal(labels, ref[t])
    prov = json.loads((tmp_path / "m" / "provenance.json").read_text())
    assert summary["random_weights"] is True and prov["random_weights"] is True
    assert prov["model"] == "random-init surgseg_tiny" and prov["checkpoint"] is None
    assert "RANDOM" in prov["warning"]
    assert prov["tracking"] == {"direction": "both", "frame_range": [1, 4], "frames_written": 4, "status": "completed"}
    assert prov["prompts"][0]["frame"] == 2 and prov["prompts"][0]["object"] == 3


def test_track_points_two_objects_equals_the_engine(frames, tmp_path, biased_build):
    # napari-style (t, y, x) points with obj_id / positive features
    data = np.array([[1, 30, 20], [1, 10, 70], [1, 40, 60], [3, 35, 22]], float)
    features = {"obj_id": [1, 1, 2, 1], "positive": [True, False, True, True]}
    prompts = prompts_from_points_table(data, features)
    assert prompts == [
        {"frame": 1, "obj_id": 1, "points": [[20.0, 30.0], [70.0, 10.0]], "labels": [1, 0], "box": None},
        {"frame": 1, "obj_id": 2, "points": [[60.0, 40.0]], "labels": [1], "box": None},
        {"frame": 3, "obj_id": 1, "points": [[22.0, 35.0]], "labels": [1], "box": None},
    ]
    got = {}
    summary = track_video(frames, prompts, direction="forward", sink=lambda r: got.__setitem__(r.frame_idx, r.label_map()))
    assert sorted(got) == list(range(1, T)) and summary["obj_ids"] == [1, 2]
    ref = _engine_labels(frames, prompts, direction="forward")
    for t in got:
        np.testing.assert_array_equal(got[t], ref[t])
    assert set(np.unique(np.stack(list(got.values())))) == {0, 1, 2}


def test_prompt_errors_name_the_problem(frames):
    with pytest.raises(ConfigError, match="no prompts"):
        track_video(frames, [])
    with pytest.raises(ConfigError, match="outside the video"):
        track_video(frames, [{"frame": T, "obj_id": 1, "points": [[1, 1]], "labels": [1]}])
    with pytest.raises(ConfigError, match="x1 >= x0"):
        normalize_prompts([{"frame": 0, "obj_id": 1, "box": [50, 5, 10, 40]}])
    with pytest.raises(ConfigError, match="neither points nor a box"):
        normalize_prompts([{"frame": 0, "obj_id": 1}])
    with pytest.raises(ConfigError, match="2 points but 1 labels"):
        normalize_prompts([{"frame": 0, "obj_id": 1, "points": [[1, 1], [2, 2]], "labels": [1]}])
    with pytest.raises(ConfigError, match="outside the frame range"):
        track_video(frames, [{"frame": 0, "obj_id": 1, "box": [1, 1, 9, 9]}], frame_range=(2, 4))
    with pytest.raises(ConfigError, match="'positive'"):
        prompts_from_points_table(np.array([[0, 1, 1]]), {"positive": ["maybe"]})
    with pytest.raises(ConfigError, match="whole frames"):
        prompts_from_points_table(np.array([[0.5, 1, 1]]))
    with pytest.raises(ConfigError, match="unknown SAM2 model"):
        track_video(frames, [{"frame": 0, "obj_id": 1, "box": [1, 1, 9, 9]}], model="no_such_model")


# ------------------------------------------------------------------ CLI
@pytest.fixture
def video_tif(frames, tmp_path):
    import tifffile

    path = tmp_path / "clip.tif"
    tifffile.imwrite(path, frames, photometric="rgb")
    return path


def test_cli_track_box_and_points_end_to_end(video_tif, tmp_path, biased_build, capsys):
    from surgseg_core.cli.main import main
    from surgseg_core.io.export import write_points_csv

    csv = write_points_csv(np.array([[4, 30, 60], [4, 5, 5]]), tmp_path / "p.csv",
                           features={"obj_id": [2, 2], "positive": [1, 0]})
    out = tmp_path / "masks"
    rc = main(["track", str(video_tif), "--box", "1", "10", "8", "50", "40", "--obj-id", "1",
               "--points", str(csv), "--out", str(out), "--range", "1", "5", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["obj_ids"] == [1, 2] and summary["random_weights"] is True
    pngs = _read_pngs(out)
    assert sorted(pngs) == [1, 2, 3, 4, 5]
    assert set(np.unique(np.stack(list(pngs.values())))) == {0, 1, 2}
    assert json.loads((out / "provenance.json").read_text())["random_weights"] is True

    # a rerun into the same folder would mix two runs' masks: refused, then replaced with --overwrite
    (out / "notes.txt").write_text("mine")
    args = ["track", str(video_tif), "--box", "2", "10", "8", "50", "40", "--out", str(out), "--range", "2", "3"]
    assert main(args) == 1
    assert "already holds 6 mask file(s) of an earlier run" in capsys.readouterr().err
    assert sorted(_read_pngs(out)) == [1, 2, 3, 4, 5]  # untouched
    assert main(args + ["--overwrite"]) == 0
    assert sorted(_read_pngs(out)) == [2, 3]  # only the new run's frames, with its provenance
    assert json.loads((out / "provenance.json").read_text())["tracking"]["frame_range"] == [2, 3]
    assert (out / "notes.txt").read_text() == "mine"  # the user's own files are not the writer's to delete


def test_cli_compile_flag_compiles_the_image_encoder(video_tif, tmp_path, biased_build, capsys, monkeypatch):
    """``surgseg track --compile``: the engine's compile_image_encoder, recorded
    in the provenance (torch.compile on its eager backend here: the flag's
    path, not minutes of code generation)."""
    import torch

    from surgseg_core.cli.main import main

    real, calls = torch.compile, []

    def eager_compile(fn, **kwargs):
        calls.append(kwargs)
        return real(fn, **{**kwargs, "backend": "eager", "mode": None})

    monkeypatch.setattr(torch, "compile", eager_compile)
    out = tmp_path / "masks"
    assert main(["track", str(video_tif), "--box", "1", "10", "8", "50", "40", "--out", str(out), "--range", "1", "3",
                 "--compile"]) == 0
    assert calls and calls[0]["fullgraph"] is True
    assert json.loads((out / "provenance.json").read_text())["options"]["compiled_image_encoder"] is True


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_video", "video not found"),
        ("bad_columns", "lacks 'x' and 'y'"),
        ("no_frame_column", "needs a 'frame' column"),
        ("empty_csv", "no prompts"),
        ("nothing", "no prompts"),
        ("obj_id_count", "one --obj-id per --box"),
    ],
)
def test_cli_bad_input_exits_1_with_a_clear_message(video_tif, tmp_path, capsys, case, message):
    from surgseg_core.cli.main import main

    args = ["track", str(video_tif), "--out", str(tmp_path / "o")]
    if case == "missing_video":
        args = ["track", str(tmp_path / "nope.mp4"), "--box", "0", "1", "1", "9", "9", "--out", str(tmp_path / "o")]
    elif case == "bad_columns":
        (tmp_path / "p.csv").write_text("frame,col,row\n0,1,2\n")
        args += ["--points", str(tmp_path / "p.csv")]
    elif case == "no_frame_column":
        (tmp_path / "p.csv").write_text("x,y\n1,2\n")
        args += ["--points", str(tmp_path / "p.csv")]
    elif case == "empty_csv":
        (tmp_path / "p.csv").write_text("frame,x,y,obj_id,positive\n")
        args += ["--points", str(tmp_path / "p.csv")]
    elif case == "obj_id_count":
        args += ["--box", "0", "1", "1", "9", "9", "--obj-id", "1", "--obj-id", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("surgseg: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_help_has_examples(capsys):
    from surgseg_core.cli.main import main

    with pytest.raises(SystemExit):
        main(["track", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--points" in text and "positive" in text


# ------------------------------------------------------------------ widget
@pytest.fixture
def widget_and_video(make_napari_viewer, frames, biased_build):
    from napari_surgseg.widgets.sam2_track import Sam2TrackWidget

    viewer = make_napari_viewer()
    video = viewer.add_image(frames, rgb=True, name="clip")
    widget = Sam2TrackWidget(viewer)
    widget.model_combo.value = (TINY_CONFIG, None)
    return viewer, widget, video


def _click(widget, layer, obj_id, positive, tyx):
    widget.obj_spin.value = obj_id
    widget.positive_check.value = positive
    layer.add([tyx])


def _wait_done(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: widget.track_button.enabled, timeout=timeout)


def test_widget_tracks_into_a_labels_layer(widget_and_video, qtbot, frames):
    viewer, widget, video = widget_and_video
    prompts_layer = widget.new_prompt_layer()
    assert widget.prompts_combo.value is prompts_layer and prompts_layer.mode == "add"
    _click(widget, prompts_layer, 1, True, [2, 30, 20])
    _click(widget, prompts_layer, 1, False, [2, 10, 70])
    _click(widget, prompts_layer, 2, True, [2, 40, 60])
    assert prompts_layer.features["obj_id"].tolist() == [1, 1, 2]
    assert prompts_layer.features["positive"].tolist() == [True, False, True]
    widget.track()
    labels = widget.result_layer
    assert labels.name == "clip SAM2 masks" and labels.data.shape == (T, H, W) and labels.data.dtype == np.uint8
    assert not widget.track_button.enabled and widget.cancel_button.enabled
    _wait_done(qtbot, widget)
    assert widget.last_summary is not None and widget.last_summary["frames_written"] == T
    assert set(np.unique(labels.data)) == {0, 1, 2}
    prov = labels.metadata["provenance"]  # the one provenance key of the widget base
    assert prov["random_weights"] is True and prov["model"] == "random-init surgseg_tiny" and prov["method"] == "sam2"
    assert labels.metadata["sam2_tracking"]["status"] == "completed"
    # the same prompts through the core give the same masks
    clicks = [
        {"frame": 2, "obj_id": 1, "points": [[20, 30], [70, 10]], "labels": [1, 0]},
        {"frame": 2, "obj_id": 2, "points": [[60, 40]], "labels": [1]},
    ]
    ref = _engine_labels(frames, clicks, direction="both")
    for t in range(T):
        np.testing.assert_array_equal(labels.data[t], ref[t])


@pytest.mark.parametrize("choice", ["bf16", "fp32"])
def test_widget_precision_choice_reaches_the_engine_and_its_provenance(widget_and_video, qtbot, choice):
    """The widget's Precision picker is the CLI's --precision: the run uses it and
    the masks layer's provenance says which ran."""
    from surgseg_core.precision_names import INFERENCE_PRECISIONS

    viewer, widget, video = widget_and_video
    assert list(widget.precision_combo.choices) == list(INFERENCE_PRECISIONS) and widget.precision_combo.value == "auto"
    widget.precision_combo.value = choice
    prompts_layer = widget.new_prompt_layer()
    _click(widget, prompts_layer, 1, True, [1, 30, 20])
    widget.track()
    _wait_done(qtbot, widget)
    assert widget.result_layer.metadata["provenance"]["options"]["precision"] == choice


def test_widget_preview_segments_only_the_current_frame(widget_and_video, qtbot, frames, monkeypatch):
    """Preview: the frame shown, from its own clicks, into a reused preview
    layer; equal to that frame of a full tracking run with those clicks."""
    import napari_surgseg.widgets.sam2_track as mod

    viewer, widget, video = widget_and_video
    layer = widget.new_prompt_layer()
    _click(widget, layer, 1, True, [2, 30, 20])
    _click(widget, layer, 2, True, [2, 40, 60])
    _click(widget, layer, 1, True, [4, 20, 20])  # another frame: not used by the preview of frame 2
    errors = []
    monkeypatch.setattr(mod, "show_error", errors.append)
    builds = []
    biased = build_module.build_model
    monkeypatch.setattr(build_module, "build_model", lambda *a, **k: builds.append(a) or biased(*a, **k))
    viewer.dims.set_current_step(0, 3)
    widget.preview()
    assert "no clicks on frame 3" in errors.pop() and widget.preview_layer is None
    viewer.dims.set_current_step(0, 2)
    widget.preview()
    preview = widget.preview_layer
    assert preview.name == "clip SAM2 preview" and not widget.track_button.enabled
    _wait_done(qtbot, widget)
    assert not errors
    assert widget.last_summary["frames_written"] == 1
    ref = _engine_labels(frames, [{"frame": 2, "obj_id": 1, "points": [[20, 30]], "labels": [1]},
                                  {"frame": 2, "obj_id": 2, "points": [[60, 40]], "labels": [1]}],
                         direction="forward")
    np.testing.assert_array_equal(preview.data[2], ref[2])
    assert set(np.unique(preview.data[2])) == {0, 1, 2}
    others = [t for t in range(T) if t != 2]
    assert not preview.data[others].any()
    assert "frame 2" in widget.status.value and "RANDOM" in widget.status.value
    assert preview.metadata["provenance"]["random_weights"] is True
    # a second preview on frame 4 reuses the layer and keeps frame 2
    viewer.dims.set_current_step(0, 4)
    widget.preview()
    _wait_done(qtbot, widget)
    assert widget.preview_layer is preview and preview.data[4].any() and preview.data[2].any()
    assert sum(isinstance(lay, type(preview)) for lay in viewer.layers) == 1
    # tracking after the previews reuses the model built for the first preview
    widget.track()
    _wait_done(qtbot, widget)
    assert widget.last_summary["frames_written"] == T and len(builds) == 1


def test_widget_box_prompts_track_their_object(widget_and_video, qtbot, frames):
    """A rectangle in the box layer, drawn with object id 3, becomes a SAM2
    box prompt for object 3 (beside the clicks of object 1): the masks equal
    the engine's for the same box and click."""
    viewer, widget, video = widget_and_video
    boxes = widget.new_box_layer()
    assert widget.boxes_combo.value is boxes and boxes.mode == "add_rectangle"
    np.testing.assert_allclose(boxes.scale, video.scale)
    widget.obj_spin.value = 3
    # (t, y, x) corners on frame 2: what drawing a rectangle gives
    boxes.add_rectangles(np.array([[[2, 8, 10], [2, 8, 50], [2, 40, 50], [2, 40, 10]]], float))
    assert boxes.features["obj_id"].tolist() == [3]
    points = widget.new_prompt_layer()
    _click(widget, points, 1, True, [2, 50, 65])
    widget.track()
    labels = widget.result_layer
    _wait_done(qtbot, widget)
    assert set(widget.last_summary["obj_ids"]) == {1, 3}
    prompts = labels.metadata["sam2_tracking"]["prompts"]
    assert {"frame": 2, "obj_id": 3, "points": [], "labels": [], "box": [10.0, 8.0, 50.0, 40.0]} in prompts
    assert set(np.unique(labels.data)) == {0, 1, 3}
    ref = _engine_labels(frames, [{"frame": 2, "obj_id": 3, "box": [10, 8, 50, 40]},
                                  {"frame": 2, "obj_id": 1, "points": [[65, 50]], "labels": [1]}], direction="both")
    for t in range(T):
        np.testing.assert_array_equal(labels.data[t], ref[t])
    # boxes alone are prompts too; the preview of their frame uses them
    viewer.layers.remove(points)
    widget.reset_choices()
    viewer.dims.set_current_step(0, 2)
    widget.preview()
    _wait_done(qtbot, widget)
    assert widget.last_summary["obj_ids"] == [3]
    alone = _engine_labels(frames, [{"frame": 2, "obj_id": 3, "box": [10, 8, 50, 40]}], direction="forward")
    np.testing.assert_array_equal(widget.preview_layer.data[2], alone[2])
    assert (alone[2] == 3).any()


def test_box_prompts_follow_a_scaled_layer_and_refuse_boxes_without_a_frame(make_napari_viewer, frames):
    from napari.layers import Shapes

    from surgseg_core.errors import SurgsegError

    from napari_surgseg.widgets.sam2_track import prompts_from_boxes

    viewer = make_napari_viewer()
    video = viewer.add_image(frames, rgb=True, name="clip", scale=(2, 0.5, 0.5), translate=(4, 0, 0))
    boxes = Shapes(ndim=3, features={"obj_id": np.zeros(0, int)})  # identity placement: world coordinates
    boxes.feature_defaults = {"obj_id": 2}
    boxes.add_rectangles(np.array([[[8, 4, 5], [8, 4, 25], [8, 20, 25], [8, 20, 5]]], float))  # world t 8: frame 2
    boxes.add_ellipses(np.array([[[8, 1, 1], [8, 1, 3], [8, 3, 3], [8, 3, 1]]], float))  # not a box: ignored
    assert prompts_from_boxes(boxes, video) == [{"frame": 2, "obj_id": 2, "box": [10.0, 8.0, 50.0, 40.0]}]
    flat = Shapes(ndim=2)
    flat.add_rectangles(np.array([[[4, 5], [20, 25]]], float))
    with pytest.raises(SurgsegError, match="boxes need a frame"):
        prompts_from_boxes(flat, video)


def test_widget_refuses_without_prompts_or_video(make_napari_viewer, frames, monkeypatch):
    import napari_surgseg.widgets.base.tracking as base_mod
    import napari_surgseg.widgets.sam2_track as mod

    errors = []
    for module in (mod, base_mod):  # the widget's own messages and those of its base
        monkeypatch.setattr(module, "show_error", errors.append)
    viewer = make_napari_viewer()
    widget = mod.Sam2TrackWidget(viewer)
    widget.track()
    assert "no video" in errors[-1]
    viewer.add_image(frames, rgb=True, name="clip")
    widget.reset_choices()
    widget.track()
    assert "no prompts" in errors[-1]
    widget.new_prompt_layer()
    widget.track()  # an empty prompt layer
    assert "no prompts" in errors[-1]
    assert not any(layer.__class__.__name__ == "Labels" for layer in viewer.layers)


def test_widget_cancel_keeps_finished_frames_and_gui_responsive(widget_and_video, qtbot, monkeypatch, frames):
    from qtpy.QtCore import QTimer

    viewer, widget, video = widget_and_video
    from _engine_helpers import slow_engine_steps

    real_step = StreamingSAM2._step
    emitted = slow_engine_steps(monkeypatch, after=True)  # frames done
    layer = widget.new_prompt_layer()
    _click(widget, layer, 1, True, [0, 30, 20])
    widget.direction_combo.value = "forward"
    widget.track()
    labels = widget.result_layer
    qtbot.waitUntil(lambda: len(emitted) >= 1, timeout=60000)
    # the GUI thread keeps processing events while the worker tracks
    ticked = []
    QTimer.singleShot(0, lambda: ticked.append(True))
    qtbot.waitUntil(lambda: bool(ticked), timeout=2000)
    viewer.dims.set_current_step(0, 3)
    assert not widget.track_button.enabled
    widget.cancel()
    _wait_done(qtbot, widget)
    assert labels.metadata["sam2_tracking"]["status"] == "cancelled"
    assert widget.last_summary is None
    done = sorted(set(emitted))
    assert 1 <= len(done) < T, "cancel came too late to test"
    monkeypatch.setattr(StreamingSAM2, "_step", real_step)
    ref = _engine_labels(frames, [{"frame": 0, "obj_id": 1, "points": [[20, 30]], "labels": [1]}], direction="forward")
    for t in range(T):
        if t in done:  # finished frames are complete and exact
            np.testing.assert_array_equal(labels.data[t], ref[t])
        else:
            assert not labels.data[t].any()
    assert labels.data[done].any()


# ------------------------------------------------------------------ engine prefetch
class _LoggedFrames:
    """A frame source that logs reads (and can fail on one frame)."""

    def __init__(self, frames, fail_at=None):
        self.frames, self.fail_at, self.reads = frames, fail_at, []

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise OSError("disk gone")
        self.reads.append(i)
        return self.frames[i]


def _prefetch_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("surgseg-sam2-prefetch") and t.is_alive()]


def test_propagation_reads_one_frame_ahead_and_leaves_no_thread(frames):
    from surgseg_core.errors import VideoError
    from surgseg_core.progress import CancelToken

    model = _present(build_model(TINY_CONFIG, seed=0))
    src = _LoggedFrames(frames)
    engine = StreamingSAM2(model, src)
    engine.add_points(0, 1, [[20, 30]], [1])
    ahead = []
    engine.propagate(lambda r: ahead.append(max(src.reads) - r.frame_idx))
    assert max(ahead) <= 1, "reads more than one frame ahead of the model"
    assert 1 in ahead, "the next frame is never read while the model works"
    assert sorted(src.reads) == [0, 0] + list(range(1, T))  # each frame once (0: size probe + prompt)
    assert not _prefetch_threads()
    # cancelled mid-video: the reader thread is gone, nothing read beyond the next frame
    token = CancelToken()
    src.reads.clear()
    engine.reset()
    engine.add_points(0, 1, [[20, 30]], [1])
    with pytest.raises(Cancelled):
        engine.propagate(lambda r: token.cancel() if r.frame_idx == 2 else None, cancel=token)
    assert max(src.reads) <= 3 and not _prefetch_threads()
    # a frame that cannot be read: the same VideoError as without prefetch
    engine = StreamingSAM2(model, _LoggedFrames(frames, fail_at=4))
    engine.add_points(0, 1, [[20, 30]], [1])
    with pytest.raises(VideoError, match="cannot read frame 4"):
        engine.propagate()
    assert not _prefetch_threads()


def test_prompts_outside_the_frame_are_refused(frames):
    """A click or a box off the frame used to "succeed" with a meaningless mask."""
    model = build_model(TINY_CONFIG, device="cpu", seed=0)
    engine = StreamingSAM2(model, frames)
    h, w = frames.shape[1:3]
    with pytest.raises(ConfigError, match=rf"click \({w + 5}, 10\) lies outside the {w}x{h} frame"):
        engine.add_points(0, 1, [[w + 5, 10]], [1])
    with pytest.raises(ConfigError, match="lies outside"):
        engine.add_points(0, 1, [[10, 10], [5, -1]], [1, 0])
    with pytest.raises(ConfigError, match="entirely outside"):
        engine.add_box(0, 1, [w + 1, 0, w + 20, 10])
    assert engine.obj_ids == []  # nothing was registered
    engine.add_box(0, 1, [-5, -5, 20, 20])  # a box overlapping the frame is fine (SAM2 clips it)
    engine.add_points(0, 2, [[0, 0], [w, h]], [1, 1])  # the frame's edges are on it
    assert engine.obj_ids == [1, 2]
