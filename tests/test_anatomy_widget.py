"""The "Anatomy (F2PASeg)" widget: boxes per class -> propagate -> a class
label map on every frame; correction -> re-propagation changes later frames
only; cancel and undo leave a consistent layer; F2PASeg weights load by
their registered name (the model variant comes from the registry / the
training checkpoint).

Models are random-init F2PASeg on the tiny SAM2 architecture (no weights can
be downloaded here) with the object-score head biased to "present" (as in
test_sam2_track.py): the masks are meaningless but non-trivial, so every
check compares with the core driven directly with the same prompts.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")

from surgseg_core.methods.f2paseg.classes import PAS  # noqa: E402
from surgseg_core.sam2_engine import StreamingSAM2  # noqa: E402
from surgseg_core.sam2_engine import build as build_module  # noqa: E402

T, H, W = 6, 64, 80
BOXES = {1: [2, 8, 10, 40, 44], 3: [2, 30, 44, 60, 76]}  # class: frame, y0, x0, y1, x1


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(11, n_frames=T, height=H, width=W)
    return np.stack([clip.frame(i).image for i in range(T)])


def _present(net):
    with torch.no_grad():  # the random decoder says "object present"
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return net


@pytest.fixture
def biased(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    torch.set_num_threads(1)
    real = build_module.build_model
    monkeypatch.setattr(build_module, "build_model", lambda *a, **k: _present(real(*a, **k)))


def _f2paseg_model():
    from surgseg_core.methods.f2paseg.model import build_f2paseg

    return build_f2paseg("surgseg_tiny", None, device="cpu", seed=0)  # what "random tiny" builds


# ------------------------------------------------------------------ weights by name (core)
def test_registered_f2paseg_weights_build_the_fusion_variant_by_name(tmp_path, monkeypatch):
    """What the trainer registers (method f2paseg, no variant, a trainable-only
    training checkpoint) and exported SAM2-key weights both load by name as
    F2PASeg with exactly their weights; plain SAM2 weights stay plain."""
    from surgseg_core.methods.f2paseg.model import FusionMaskDecoder
    from surgseg_core.sam2_engine.track import load_tracking_model, resolve_net
    from surgseg_core.training.checkpoint import model_state_for_checkpoint, save_checkpoint
    from surgseg_core.training.method import get_method
    from surgseg_core.training.trainer import resolve_config
    from surgseg_core.weights import register_checkpoint

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    torch.set_num_threads(1)
    spec = get_method("f2paseg")
    cfg = resolve_config(spec, {"sam2_config": "surgseg_tiny", "base_weights": None, "image_size": 128})
    trained = spec.build_model(cfg)
    with torch.no_grad():  # "training" moved the fusion module off its zero init
        for p in trained.sam.sam_mask_decoder.fusion.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state, extra = model_state_for_checkpoint(trained, True)
    decoder = [k for k in state if k.startswith("sam.sam_mask_decoder.")]
    assert extra["trainable_only"] and decoder and all(k.startswith("sam.sam_mask_decoder.fusion.") for k in decoder)
    path = save_checkpoint(tmp_path / "best.pt", {"model": state, "config": cfg, "method": "f2paseg", **extra})
    register_checkpoint(path, name="pit-f2pa", method="f2paseg", config="surgseg_tiny")  # as training does
    net, random_weights = resolve_net(load_tracking_model("pit-f2pa"))
    assert isinstance(net.sam_mask_decoder, FusionMaskDecoder) and not random_weights
    assert net.surgseg_variant == "f2paseg" and net.surgseg_model_name == "pit-f2pa"
    assert net.surgseg_keep_recent_prompt_frames == 2  # prompt partitioning on, from the checkpoint's config
    want = trained.sam.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(v, want[k]), k
    # exported weights under SAM2's own keys, registered without a variant
    exported = tmp_path / "exported.pt"
    torch.save(trained.sam.state_dict(), exported)
    register_checkpoint(exported, name="pit-export", method="f2paseg", config="surgseg_tiny")
    again = load_tracking_model("pit-export")
    assert isinstance(again.sam_mask_decoder, FusionMaskDecoder) and again.surgseg_load_report.new_keys == []
    assert all(torch.equal(v, want[k]) for k, v in again.state_dict().items())
    plain = tmp_path / "plain.pt"
    torch.save(build_module.build_model("surgseg_tiny", device="cpu").state_dict(), plain)
    register_checkpoint(plain, name="plain-ft", method="sam2", config="surgseg_tiny")
    assert not isinstance(load_tracking_model("plain-ft").sam_mask_decoder, FusionMaskDecoder)


# ------------------------------------------------------------------ widget
@pytest.fixture
def widget_and_video(make_napari_viewer, frames, biased):
    from napari_surgseg.widgets.anatomy import RANDOM_TINY, AnatomyWidget

    viewer = make_napari_viewer()
    video = viewer.add_image(frames, rgb=True, name="clip")
    widget = AnatomyWidget(viewer)
    assert (RANDOM_TINY, None) in list(widget.model_combo.choices)
    widget.model_combo.value = (RANDOM_TINY, None)  # the bundled demo is the default when present
    widget.device_combo.value = "cpu"
    return viewer, widget, video


def _boxes(widget, classes=(1, 3)):
    layer = widget.new_box_layer()
    for c in classes:
        widget.class_combo.value = c
        t, y0, x0, y1, x1 = BOXES[c]
        layer.add_rectangles(np.array([[[t, y0, x0], [t, y0, x1], [t, y1, x1], [t, y1, x0]]], float))
    return layer


def _wait_done(qtbot, widget, timeout=120000):
    qtbot.waitUntil(lambda: widget.track_button.enabled, timeout=timeout)


def _reference(frames, classes=(1, 3)):
    """The core's class maps for the same boxes with the same model (the one code path)."""
    from surgseg_core.sam2_engine.track import track_video

    out = {}
    prompts = [{"frame": BOXES[c][0], "obj_id": c, "box": [BOXES[c][2], BOXES[c][1], BOXES[c][4], BOXES[c][3]]}
               for c in classes]
    track_video(frames, prompts, model=_present(_f2paseg_model()), direction="both",
                sink=lambda r: out.__setitem__(r.frame_idx, r.label_map()))
    return out


def test_boxes_per_class_propagate_to_class_maps_on_every_frame(widget_and_video, qtbot, frames):
    from napari.utils.colormaps import DirectLabelColormap

    viewer, widget, video = widget_and_video
    boxes = _boxes(widget)
    assert widget.boxes_combo.value is boxes and boxes.mode == "add_rectangle"
    assert boxes.features["obj_id"].tolist() == [1, 3]
    # each box is drawn in its class's colour from the class table
    for k, c in enumerate((1, 3)):
        np.testing.assert_allclose(boxes.edge_color[k][:3], np.array(PAS.colours()[c]) / 255, atol=1e-6)
    widget.track()
    labels = widget.result_layer
    assert labels.name == "clip anatomy" and labels.data.shape == (T, H, W) and not widget.track_button.enabled
    _wait_done(qtbot, widget)
    assert isinstance(labels.data, np.memmap)  # the sparse on-disk stack napari reads frame by frame
    data = np.asarray(labels.data)
    for t in range(T):  # every frame: background and the boxed classes only, and not empty
        assert set(np.unique(data[t])) <= {0, 1, 3} and data[t].any(), t
    assert set(np.unique(data)) == {0, 1, 3}
    ref = _reference(frames)
    for t in range(T):
        np.testing.assert_array_equal(data[t], ref[t])
    assert isinstance(labels.colormap, DirectLabelColormap)
    np.testing.assert_allclose(labels.colormap.map(np.array([3]))[0][:3], np.array(PAS.colours()[3]) / 255, atol=1e-6)
    prov = labels.metadata["provenance"]
    assert prov["method"] == "f2paseg" and prov["variant"] == "f2paseg" and prov["random_weights"] is True
    assert prov["class_set"]["name"] == "pas" and prov["class_set"]["classes"]["3"]["abbrev"] == "IP"
    state = labels.metadata["f2paseg_anatomy"]
    assert state["status"] == "completed" and state["obj_ids"] == [1, 3] and state["class_set"] == "pas"
    assert widget.status.value.startswith("propagated class(es) SF, IP over 6 frame(s)")


def test_class_set_changes_the_classes_and_their_colours(widget_and_video):
    from surgseg_core.methods.f2paseg.classes import CHOLECSEG8K

    viewer, widget, video = widget_and_video
    boxes = _boxes(widget, classes=(1,))
    points = widget.new_prompt_layer()
    widget.class_set_combo.value = "cholecseg8k"
    assert list(widget.class_combo.choices) == list(CHOLECSEG8K.ids)
    widget.class_combo.value = 10  # gallbladder
    points.add([[1, 20, 20]])
    assert points.features["obj_id"].tolist() == [10] and boxes.feature_defaults["obj_id"][0] == 10
    np.testing.assert_allclose(points.face_color[0][:3], np.array(CHOLECSEG8K.colours()[10]) / 255, atol=1e-6)
    np.testing.assert_allclose(boxes.edge_color[0][:3], np.array(CHOLECSEG8K.colours()[1]) / 255, atol=1e-6)
    errors = []
    widget.error = errors.append
    widget.class_set_combo.value = "pas"
    widget.track()  # class 10 is not a PAS class: refused, naming it
    assert "label(s) [10] are not classes of the class set 'pas'" in errors[-1] and widget.result_layer is None


def test_correction_repropagates_later_frames_only_cancel_and_undo(widget_and_video, qtbot, frames, monkeypatch):
    viewer, widget, video = widget_and_video
    _boxes(widget)
    widget.track()
    _wait_done(qtbot, widget)
    labels = widget.result_layer
    tracked = np.array(labels.data)
    # a brush correction on frame k: class 1 becomes a rectangle, class 3 is erased
    k = 2
    labels.data[k] = 0
    labels.data[k, 10:30, 12:40] = 1
    labels.refresh()
    before = np.array(labels.data)
    viewer.dims.set_current_step(0, k)
    assert widget.direction_combo.value == "both"  # Re-propagate resumes forward: frames before k are kept
    widget.repropagate()
    _wait_done(qtbot, widget)
    summary = widget.last_summary
    assert summary["frame"] == k and summary["direction"] == "forward" and summary["obj_ids"] == [1, 3]
    after = np.array(labels.data)
    np.testing.assert_array_equal(after[: k + 1], before[: k + 1])
    changed = summary["frames_changed"]
    assert changed and all(t > k for t in changed)
    for t in changed:
        assert not np.array_equal(after[t], before[t]) and set(np.unique(after[t])) <= {0, 1, 3}
    # the same through the core: mask prompts of the corrected frame, forward
    engine = StreamingSAM2(_present(_f2paseg_model()), frames)
    for c in (1, 3):
        engine.add_mask(k, c, before[k] == c)
    ref = {}
    engine.propagate(lambda r: ref.__setitem__(r.frame_idx, r.label_map()), direction="forward", start=k)
    for t in range(k + 1, T):
        np.testing.assert_array_equal(after[t], ref[t])
    assert "re-propagated class(es) SF, IP from frame 2" in widget.status.value
    # undo puts the whole run back
    assert widget.undo_last_run() == changed
    np.testing.assert_array_equal(np.array(labels.data), before)
    # cancelled mid-run: each frame is as before or as the full run made it; undo again restores
    from _engine_helpers import cancel_mid_run, slow_engine_steps

    cancel_mid_run(qtbot, widget, widget.repropagate, slow_engine_steps(monkeypatch))
    assert labels.metadata["f2paseg_anatomy"]["status"] == "cancelled" and widget.last_summary is None
    partial = np.array(labels.data)
    assert np.array_equal(partial[max(changed)], before[max(changed)]), "cancel came too late to test"
    for t in range(T):
        assert np.array_equal(partial[t], before[t]) or np.array_equal(partial[t], after[t]), t
    # a run cancelled before it wrote a frame leaves no undo step (on a loaded machine the cancel can come that
    # early): undo then would take back the propagation before it
    if not np.array_equal(partial, before):
        widget.undo_last_run()
    np.testing.assert_array_equal(np.array(labels.data), before)
    assert widget.undo_button.enabled
    widget.undo_last_run()  # then the first propagation: the layer as before it, empty
    assert tracked.any() and not np.asarray(labels.data).any() and not widget.undo_button.enabled
    # a label that is no class of the set is refused before any run
    labels.data[k, 0:4, 0:4] = 9
    errors = []
    widget.error = errors.append
    widget.repropagate()
    assert "frame 2: label(s) [9] are not classes" in errors[-1] and widget.track_button.enabled


def test_weights_picker_offers_f2paseg_weights_and_defaults_to_the_demo(make_napari_viewer, tmp_path, monkeypatch):
    from surgseg_core.weights import register_checkpoint

    from napari_surgseg.widgets.anatomy import DEMO_WEIGHTS, RANDOM_TINY, AnatomyWidget

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    for name, method in [("liver-a", "liver"), ("sam2-ft", "sam2"), ("other-f2pa", "f2paseg"),
                         (DEMO_WEIGHTS, "f2paseg")]:
        path = tmp_path / f"{name}.pt"
        path.write_bytes(name.encode() * 10)
        register_checkpoint(path, name=name, method=method)
    widget = AnatomyWidget(make_napari_viewer())
    assert [label for label, _ in widget.model_combo.choices] == ["other-f2pa", DEMO_WEIGHTS, RANDOM_TINY]
    assert widget.model_combo.value == (DEMO_WEIGHTS, None)
