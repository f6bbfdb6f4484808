"""The tool landmarks widget under Xvfb with the random tiny model (testing
choice; its landmarks mean nothing, so the checks are about where results
go): heatmap stacks on disk lie on the video and hold the peaks the points
were decoded from, a cancel keeps finished frames only, and edited points
become annotations the training reader reads back."""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

pytest.importorskip("napari")

pytestmark = [pytest.mark.gui, pytest.mark.slow]

N, H, W = 6, 96, 128


@functools.lru_cache(maxsize=None)
def _clip_dir():
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from surgseg_core.synth import write_synthetic_clip

    root = Path(tempfile.mkdtemp(prefix="surgseg-toolsw-"))
    atexit.register(shutil.rmtree, root, True)
    return write_synthetic_clip(root / "clip", seed=5, n_frames=N, height=H, width=W) and root / "clip"


@functools.lru_cache(maxsize=None)
def _models():
    from napari_surgseg.widgets.base import ModelCache

    return ModelCache()  # one tiny model for the module's widgets (built once)


@pytest.fixture
def tools_widget(make_napari_viewer, tmp_path, monkeypatch):
    from surgseg_core.io import open_video

    from napari_surgseg.widgets.base.layers import video_layer_data
    from napari_surgseg.widgets.tools import RANDOM_TINY, ToolLandmarksWidget

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))  # nothing registered but the bundled
    viewer = make_napari_viewer()
    src = open_video(_clip_dir() / "video.mp4")
    data, kwargs, _ = video_layer_data(src)
    layer = viewer.add_image(data, **kwargs)
    widget = ToolLandmarksWidget(viewer)
    # the bundled demo networks are the default when present; these tests use the random tiny model
    from surgseg_core.methods.tools.demo import DEMO_NAME
    from surgseg_core.weights import get_entry

    assert widget.weights_combo.value == (DEMO_NAME if get_entry(DEMO_NAME) else RANDOM_TINY)
    widget.weights_combo.value = RANDOM_TINY
    widget.models = _models()
    widget.video_combo.value = layer
    widget.device_combo.value = "cpu"
    widget.threshold_spin.value = 0.0  # random heatmaps: every frame's maximum is a landmark
    yield viewer, widget, layer
    src.close()


def _run(widget, qtbot):
    worker = widget.run()
    assert worker is not None, widget.status.value
    assert not widget.run_btn.enabled and widget.cancel_btn.enabled  # while it runs
    with qtbot.waitSignal(worker.finished, timeout=300_000):  # shared CI machines can be slow
        pass
    qtbot.waitUntil(lambda: widget.run_btn.enabled, timeout=10_000)


def _frames_of(points) -> set:
    return {int(round(t)) for t in np.asarray(points.data)[:, 0]}


def test_range_run_gives_heatmap_layers_points_and_prior(tools_widget, qtbot):
    from napari.layers import Labels

    viewer, widget, video = tools_widget
    widget.mode_combo.value = "frame range"
    widget.frames.set(1, 3)  # both included
    _run(widget, qtbot)
    heat = widget.heat_layers
    assert set(heat) == {"tip", "anchor"}
    for kind, layer in heat.items():
        assert layer.blending == "additive" and isinstance(layer.data, np.memmap)  # on disk
        assert layer.data.shape == (N, 48, 64) and layer.data.dtype == np.uint8
        assert all(layer.data[t].any() for t in (1, 2, 3))
        assert not layer.data[0].any() and not layer.data[4:].any()  # outside the range
        # the stack covers the video: its corner pixel centres map onto the video's
        np.testing.assert_allclose(np.asarray(layer.data_to_world((0, 0, 0)))[1:], (0.5, 0.5))
        np.testing.assert_allclose(np.asarray(layer.data_to_world((0, 47, 63)))[1:], (H - 1.5, W - 1.5))
    pts = widget.points_layer
    assert _frames_of(pts) <= {1, 2, 3} and len(pts.data) >= 3
    feats = pts.features
    assert list(feats.columns) == ["type", "tool", "score"]
    assert set(feats["type"]) <= {"tip", "anchor"} and (feats["tool"] >= 1).all() and feats["score"].notna().all()
    # each point sits on the peak of its own heatmap (through world coordinates)
    for p, kind in zip(np.asarray(pts.data), feats["type"]):
        stack = heat[kind].data
        t, y, x = np.round(heat[kind].world_to_data(pts.data_to_world(p))).astype(int)
        near = stack[t, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
        assert near.max() == stack[t].max()
    # distinct symbols and colours per type, from the method's spec
    symbols = {k: str(s.value) for k, s in zip(feats["type"], pts.symbol)}
    assert all(symbols[k] == {"tip": "disc", "anchor": "square"}[k] for k in symbols)
    colours = {k: tuple(np.round(c[:3], 2)) for k, c in zip(feats["type"], pts.face_color)}
    expected = {k: tuple(np.round(widget.class_colours[c][:3], 2)) for k, c in widget.types.items()}
    assert all(colours[k] == expected[k] for k in colours)
    assert isinstance(widget.prior_layer, Labels) and widget.prior_layer.data.shape == (N, H, W)
    prov = pts.metadata["provenance"]
    assert prov["method"] == "tools" and prov["random_weights"] and prov["frames"] == [1, 3]
    assert "RANDOM" in widget.status.value
    # the run left the selection alone: the video stays the active layer
    assert viewer.layers.selection.active is not pts


def test_cancel_keeps_finished_frames_only(tools_widget, qtbot, monkeypatch):
    from surgseg_core.methods.tools import predict as predict_mod

    viewer, widget, video = tools_widget
    widget.mode_combo.value = "whole video"
    original = predict_mod.StackSink.__call__
    seen = []

    def write_then_cancel(self, rec):
        original(self, rec)
        seen.append(rec["frame"])
        if len(seen) == 2:
            while widget.runs.token is None:  # set when run() returns
                time.sleep(0.01)
            widget.cancel()  # what the Cancel button does

    monkeypatch.setattr(predict_mod.StackSink, "__call__", write_then_cancel)
    _run(widget, qtbot)
    assert seen == [0, 1]
    for layer in widget.heat_layers.values():
        assert layer.data[:2].any() and not layer.data[2:].any()
    pts = widget.points_layer
    assert _frames_of(pts) <= {0, 1} and len(pts.features) == len(pts.data) > 0
    assert pts.metadata["provenance"]["cancelled"] is True
    assert widget.status.value.startswith("cancelled; kept 2 frame(s)")


def test_edited_points_become_annotations_and_exports(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A ranged layer (source frames 2..5): the moved, retyped and added
    points of layer frame 1 are written as source frame 3, beside a frame the
    file already had; the core reader and the training data finder read it.
    (With the demo weights registered they are the default choice.)"""
    import json
    import os

    from surgseg_core.io import open_video
    from surgseg_core.methods.tools.annotations import ToolAnnotation, read_annotations, write_annotations
    from surgseg_core.methods.tools.data import find_samples

    from napari_surgseg.widgets.base import video_placement
    from surgseg_core.weights import register_checkpoint

    from napari_surgseg.widgets.tools import DEMO_WEIGHTS, RANDOM_TINY, ToolLandmarksWidget

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    for name, method in (("other-tools", "tools"), (DEMO_WEIGHTS, "tools"), ("liver-x", "liver")):
        (tmp_path / f"{name}.pt").write_bytes(b"x")
        register_checkpoint(tmp_path / f"{name}.pt", name=name, method=method)
    viewer = make_napari_viewer()
    clip = _clip_dir() / "video.mp4"
    with open_video(clip) as src:
        frames = np.stack([src[i] for i in range(2, N)])
    md = {"source_path": str(clip), "start": 2, "step": 1}
    video = viewer.add_image(frames, rgb=True, name="ranged", metadata=md, **video_placement(md))
    widget = ToolLandmarksWidget(viewer)
    assert widget.weights_combo.value == DEMO_WEIGHTS
    assert list(widget.weights_combo.choices) == ["other-tools", DEMO_WEIGHTS, RANDOM_TINY]
    widget.weights_combo.value = RANDOM_TINY
    widget.models = _models()
    widget.video_combo.value, widget.device_combo.value, widget.threshold_spin.value = video, "cpu", 0.0
    widget.prior_check.value = False
    viewer.dims.set_point(0, 3.0)  # world time = source frame 3 = layer frame 1
    _run(widget, qtbot)  # current frame
    assert widget.prior_layer is None
    pts = widget.points_layer
    assert _frames_of(pts) == {1}
    kinds = list(pts.features["type"])
    assert sorted(kinds) == ["anchor", "tip"]  # max tools 1: one of each, one tool
    tip, anchor = kinds.index("tip"), kinds.index("anchor")
    # move the tip; make the anchor tool 2's; add tool 2's tip
    data = np.asarray(pts.data).copy()
    data[tip, 1:] = (40.0, 50.0)
    pts.data = data
    pts.selected_data = {anchor}
    widget.type_combo.value, widget.tool_spin.value = "anchor", 2
    pts.selected_data = {anchor}
    assert widget.set_selected() == 1
    widget.type_combo.value = "tip"
    pts.add([1, 60.0, 90.0])
    assert pts.features["type"].iloc[-1] == "tip" and pts.features["tool"].iloc[-1] == 2
    assert str(pts.symbol[-1].value) == "disc"
    out = tmp_path / "train" / "tool_annotations.csv"
    out.parent.mkdir()
    keep = ToolAnnotation(os.path.relpath(clip, out.parent), 5, None, None, None, None, None)
    write_annotations(out, [keep])
    widget.corrections_edit.value = str(out)
    widget.action_combo.value, widget.tool_type_combo.value = "dissect", "hook"
    assert widget.use_as_correction() == out
    recs = read_annotations(out)
    assert [r.frame for r in recs] == [3, 3, 5] and recs[2] == keep
    by_tool = {r.tool_id: r for r in recs[:2]}
    assert by_tool[1].tip == (50.0, 40.0) and by_tool[1].anchor is None
    assert by_tool[2].tip == (90.0, 60.0) and by_tool[2].anchor == tuple(np.round(data[anchor, :0:-1], 3))
    assert {r.action for r in recs[:2]} == {"dissect"} and {r.tool_type for r in recs[:2]} == {"hook"}
    samples = find_samples(tmp_path / "train")  # what `surgseg train tools` reads, checked against the video
    assert [s.frame for s in samples] == [3, 5]
    # exports: the predictions format, in source frames; the hand-placed point has no score
    csv_path = widget.export(tmp_path / "pred.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "video,frame,type,tool,x,y,score" and len(lines) == 4
    assert any(line.endswith(",tip,2,90.0,60.0,") for line in lines)
    obj = json.loads(widget.export(tmp_path / "pred", "json").read_text())
    assert obj["format"] == "surgseg-tool-landmark-predictions" and {p["frame"] for p in obj["predictions"]} == {3}
    assert obj["provenance"]["method"] == "tools"
    # a tool with two tips is refused, and the file keeps what it had
    pts.selected_data = {len(pts.data) - 1}
    widget.tool_spin.value = 1
    pts.selected_data = {len(pts.data) - 1}
    widget.set_selected()
    assert widget.use_as_correction() is None and "two tips" in widget.status.value
    assert read_annotations(out) == recs
