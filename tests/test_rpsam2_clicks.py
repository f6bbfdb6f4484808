"""RP-SAM2 clicks on a video: the core (``methods.rpsam2.clicks``: encode
once per frame, refined clicks, tracking and re-propagation through the
prompt hook) and the "Clicks (RP-SAM2)" widget under Xvfb (click -> refined
point + line + mask, no re-encoding on the same frame, background encoding
of the next frame, undo, new object, Track through video, Re-propagate).

Random-init ``surgseg_tiny`` SAM2 with a small block: the object-score bias
is set to +10 (masks non-trivial, as in test_sam2_track.py) and the block's
output layer is perturbed so clicks move (as after training); masks are
meaningless, each test checks they are not empty.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import surgseg_core.sam2_engine.engine as engine_mod
from surgseg_core.errors import ConfigError
from surgseg_core.methods.rpsam2.clicks import ClickRefiner, load_click_model, refined_points

T, H, W = 6, 64, 80


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(5, n_frames=T, height=H, width=W)
    return np.stack([clip.frame(i).image for i in range(T)])


def _model(weights=None, device=None):
    """The random tiny RP-SAM2, objects "present" and a block that moves clicks."""
    model = load_click_model(weights, device=device)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
        model.shift.delta.weight.copy_(torch.randn(model.shift.delta.weight.shape, generator=g) * 0.02)
        model.shift.delta.bias.copy_(torch.tensor([0.4, -0.3]))
    return model


@pytest.fixture
def encodes(monkeypatch):
    """Calls of SAM2's image encoder (the engine's one entry to it)."""
    calls = []
    real = engine_mod.encode_frames
    monkeypatch.setattr(engine_mod, "encode_frames", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.set_num_threads(1)
    return calls


CLICKS = [{"frame": 2, "obj_id": 1, "points": [[20.0, 30.0], [70.0, 10.0]], "labels": [1, 0]},
          {"frame": 2, "obj_id": 2, "points": [[60.0, 40.0]], "labels": [1]}]


# ------------------------------------------------------------------ core
def test_refiner_encodes_once_moves_first_clicks_and_tracks_with_the_same_masks(frames, encodes):
    refiner = ClickRefiner(_model())
    assert refiner.random_weights and not refiner.encoded(frames, 2)
    assert refiner.encode(frames, 2) is True and len(encodes) == 1
    assert refiner.encode(frames, 2) is False and refiner.encoded(frames, 2)
    one = refiner.click(frames, 2, CLICKS[:1])
    both = refiner.click(frames, 2, CLICKS)
    assert len(encodes) == 1, "clicks on an encoded frame must not run the image encoder"
    rows = refined_points(both)
    assert [(r["obj_id"], r["positive"]) for r in rows] == [(1, True), (1, False), (2, True)]
    moved = [not np.allclose(r["click"], r["refined"], atol=1e-3) for r in rows]
    assert moved == [True, False, True]  # "first" mode: each object's first positive click; negatives stay
    assert set(np.unique(both["labels"])) == {0, 1, 2} and set(np.unique(one["labels"])) == {0, 1}
    assert both["provenance"]["rpsam2"]["shift_points"] == "first" and "RANDOM" in both["provenance"]["warning"]
    with pytest.raises(ConfigError, match="no clicks on frame 3"):
        refiner.click(frames, 3, CLICKS)

    got = {}
    summary = refiner.track(frames, 2, CLICKS, direction="both", sink=lambda r: got.__setitem__(r.frame_idx, r.label_map()))
    assert sorted(got) == list(range(T)) and summary["obj_ids"] == [1, 2]
    np.testing.assert_array_equal(got[2], both["labels"])  # the engine saw the refined clicks
    log = summary["provenance"]["prompts"]
    assert np.allclose(log[0]["points_after_hook"], [r["refined"] for r in rows[:2]], atol=1e-3)
    # re-propagation from a corrected frame through the same model
    labels = np.stack([got[t] for t in range(T)])
    labels[3] = 0
    labels[3, 10:30, 10:40] = 1
    before = labels.copy()
    out = refiner.repropagate(frames, labels, 3, direction="forward")
    assert out["obj_ids"] == [1] and out["random_weights"] and "rpsam2" in out["provenance"]
    np.testing.assert_array_equal(labels[:4], before[:4])
    assert out["frames_changed"] and all(t > 3 for t in out["frames_changed"])


# ------------------------------------------------------------------ widget
@pytest.fixture
def widget(make_napari_viewer, frames, monkeypatch, tmp_path, encodes):
    import napari_surgseg.widgets.rpsam2_clicks as mod

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(mod, "load_click_model", _model)
    viewer = make_napari_viewer()
    video = viewer.add_image(frames, rgb=True, name="clip")
    w = mod.RPSam2ClicksWidget(viewer)
    assert None in list(w.weights_combo.choices) and w.track_button.text == "Track through video"
    w.weights_combo.value = None  # random tiny (the bundled demo block is the default when present)
    return viewer, w, video


def _idle(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: not w.runs.busy and w._pending is None, timeout=timeout)


def _click(w, points, tyx, positive=True):
    w.positive_check.value = positive
    points.add([tyx])


def test_widget_clicks_show_refined_points_lines_and_masks_without_reencoding(widget, qtbot, frames, encodes):
    viewer, w, video = widget
    points = w.new_prompt_layer()
    viewer.dims.set_current_step(0, 2)
    _click(w, points, [2, 30, 20])
    assert w.status.value == "encoding frame 2…" and w.runs.busy  # the busy indicator of the first click
    _idle(qtbot, w)
    masks, refined, lines = w.result_layer, w.refined_layer, w.lines_layer
    assert masks.name == "clip RP-SAM2 masks" and masks.data.shape == (T, H, W)
    assert set(np.unique(masks.data[2])) == {0, 1} and not np.asarray(masks.data)[[0, 1, 3, 4, 5]].any()
    assert len(encodes) == 1
    (t, y, x), = refined.data
    assert t == 2 and not np.allclose([y, x], [30, 20], atol=1e-3)  # the click moved
    assert lines.nshapes == 1 and lines.shape_type == ["line"]
    np.testing.assert_allclose(lines.data[0], [[2, 30, 20], [2, y, x]], atol=1e-4)  # from the click to it

    _click(w, points, [2, 10, 70], positive=False)
    assert w.status.value == "segmenting frame 2…"
    _idle(qtbot, w)
    assert w.new_object() == 2 and w.positive_check.value
    _click(w, points, [2, 40, 60])
    _idle(qtbot, w)
    assert len(encodes) == 1, "later clicks on the frame must run only the block and the decoder"
    ref = ClickRefiner(w._refiner_now().model).click(frames, 2, CLICKS)  # (its own session: encodes again)
    np.testing.assert_array_equal(masks.data[2], ref["labels"])
    assert len(refined.data) == 3 and lines.nshapes == 3
    np.testing.assert_allclose(refined.data[:, 1:], [[r["refined"][1], r["refined"][0]] for r in refined_points(ref)],
                               atol=1e-3)
    assert refined.features["obj_id"].tolist() == [1, 1, 2]

    # undo: object 2's click goes, and so do its mask, refined point and line
    assert w.undo_click() == 2
    _idle(qtbot, w)
    assert len(points.data) == 2 and 2 not in np.unique(masks.data[2]) and 1 in np.unique(masks.data[2])
    assert len(refined.data) == 2 and lines.nshapes == 2
    # moving to another frame encodes it in the background; a click there then only decodes
    n = len(encodes)
    viewer.dims.set_current_step(0, 4)
    assert w.status.value == "encoding frame 4…"
    _idle(qtbot, w)
    assert len(encodes) == n + 1
    _click(w, points, [4, 30, 20])
    _idle(qtbot, w)
    assert len(encodes) == n + 1 and masks.data[4].any() and masks.data[2].any()
    assert len(refined.data) == 3


def test_widget_tracks_through_video_repropagates_and_undoes(widget, qtbot, frames, tmp_path):
    viewer, w, video = widget
    w.track()  # no clicks yet: a clear error, no layer
    assert w.result_layer is None
    points = w.new_prompt_layer()
    viewer.dims.set_current_step(0, 2)
    _click(w, points, [2, 30, 20])
    _click(w, points, [2, 10, 70], positive=False)  # queued behind the first click's run
    _idle(qtbot, w)
    w.new_object()
    _click(w, points, [2, 40, 60])
    _idle(qtbot, w)
    masks = w.result_layer
    clicked = np.array(masks.data[2])
    w.track()
    assert not w.track_button.enabled and w.cancel_button.enabled
    _idle(qtbot, w)
    assert w.last_summary["frames_written"] == T and w.last_summary["obj_ids"] == [1, 2]
    tracked = np.array(masks.data)
    assert all(tracked[t].any() for t in range(T)), "every frame gets the objects"
    np.testing.assert_array_equal(tracked[2], clicked)  # the frame's masks are those the clicks showed
    ref = {}
    ClickRefiner(w._refiner_now().model).track(frames, 2, CLICKS, sink=lambda r: ref.__setitem__(r.frame_idx, r.label_map()))
    for t in range(T):
        np.testing.assert_array_equal(tracked[t], ref[t])
    assert masks.metadata["rpsam2_clicks"]["status"] == "completed"
    assert masks.metadata["provenance"]["method"] == "rpsam2" and masks.metadata["provenance"]["random_weights"]

    # correct frame 3 by hand, re-propagate forward, undo the run
    masks.data[3] = 0
    masks.data[3, 10:30, 10:40] = 1
    before = np.array(masks.data)
    viewer.dims.set_current_step(0, 3)
    _idle(qtbot, w)  # (the background encode of frame 3)
    w.direction_combo.value = "forward"
    w.repropagate()
    _idle(qtbot, w)
    summary = w.last_summary
    assert summary["frame"] == 3 and summary["frames_changed"] and "re-propagated" in w.status.value
    after = np.array(masks.data)
    np.testing.assert_array_equal(after[:4], before[:4])
    assert w.undo_last_run() == summary["frames_changed"]
    np.testing.assert_array_equal(np.array(masks.data), before)

    # registered RP-SAM2 weights: the demo name is the default, and it loads through the registry
    from surgseg_core.methods.rpsam2.model import build_rpsam2, register_weights, save_block
    from surgseg_core.methods.rpsam2.clicks import RANDOM_TINY_CONFIG
    import napari_surgseg.widgets.rpsam2_clicks as mod

    block = build_rpsam2(RANDOM_TINY_CONFIG)
    with torch.no_grad():
        block.shift.scale.fill_(0.25)
    register_weights(save_block(block, tmp_path / "block.pt", RANDOM_TINY_CONFIG), mod.DEMO_WEIGHTS)
    other = mod.RPSam2ClicksWidget(viewer)
    assert other.weights_combo.value == mod.DEMO_WEIGHTS
    loaded = other.model_loader()().model
    assert torch.equal(loaded.shift.scale, block.shift.scale) and loaded.train_options["checkpoint"]
