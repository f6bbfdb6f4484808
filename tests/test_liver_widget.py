"""The liver landmarks widget under Xvfb with the session's small trained
model (see _liver_helpers)."""
import numpy as np
import pytest

from _liver_helpers import H, W, trained_liver_model

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def liver_widget(make_napari_viewer, qtbot):
    from surgseg_core.synth import generate_liver_scene

    from napari_surgseg.widgets.liver import LiverLandmarksWidget

    result, _, _ = trained_liver_model()
    viewer = make_napari_viewer()
    scene = generate_liver_scene(seed=40, n_frames=4, height=H, width=W)
    frames = [scene.frame(i) for i in range(4)]
    layer = viewer.add_image(np.stack([f.image for f in frames]), rgb=True, name="liver clip")
    widget = LiverLandmarksWidget(viewer)
    widget.image_combo.value = layer
    widget.checkpoint_edit.value = str(result.best_checkpoint)
    widget.thick_spin.value = 3.0
    return viewer, widget, frames, result


def _run(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.shapes_layer is not None, timeout=10_000)


def test_widget_runs_on_range_and_shows_layers(liver_widget, qtbot):
    from surgseg_core.methods.liver import LANDMARK_CLASSES
    from surgseg_core.methods.liver.metrics import dice

    viewer, widget, frames, result = liver_widget
    widget.mode_combo.value = "frame range"
    widget.start_spin.value, widget.stop_spin.value = 1, 3
    _run(widget, qtbot)
    labels = widget.labels_layer.data
    assert labels.shape == (4, H, W)
    assert not labels[0].any() and not labels[3].any()  # outside the range
    for i in (1, 2):
        scores = [dice(labels[i] == c, frames[i].mask == c) for c in LANDMARK_CLASSES]
        assert np.nanmean(scores) > 0.3  # the trained model's curves land on the truth
    frames_with_paths = set(widget.shapes_layer.features["frame"])
    assert frames_with_paths == {1, 2}
    meta = widget.labels_layer.metadata["liver"]
    assert meta["checkpoint_sha256"] and meta["model"]["encoder"] == "resnet18"
    assert widget.shapes_layer.metadata["liver"]["postprocess"]["rdp_epsilon"] == 1.0
    # class colours: silhouette yellow, ridge red, ligament blue
    colours = {int(c): tuple(np.round(e[:3], 2)) for c, e in
               zip(widget.shapes_layer.features["class_id"], widget.shapes_layer.edge_color)}
    expected = {1: (1.0, 1.0, 0.0), 2: (1.0, 0.0, 0.0), 3: (0.0, 0.0, 1.0)}
    assert all(colours[c] == expected[c] for c in colours)


def test_edit_use_as_correction_and_export(liver_widget, qtbot, tmp_path):
    from surgseg_core.methods.liver import RIDGE
    from surgseg_core.methods.liver.export import read_landmarks_json
    from surgseg_core.methods.liver.readers import read_p2ilf_xml

    viewer, widget, frames, _ = liver_widget
    widget.mode_combo.value = "current frame"
    viewer.dims.set_current_step(0, 2)
    _run(widget, qtbot)
    # the user draws a new ridge path on frame 2
    sl = widget.shapes_layer
    new = np.array([[2, 20.0, 10.0], [2, 20.0, 150.0]])
    feats = sl.features.copy()
    sl.add_paths([new], edge_color="red")
    feats.loc[len(feats)] = {"class_id": RIDGE, "frame": 2}
    sl.features = feats.reset_index(drop=True)
    assert widget.use_as_correction() == 2
    assert (widget.labels_layer.data[2, 20, 10:151] == RIDGE).all()
    assert widget.labels_layer.metadata["liver"]["corrected_frames"] == [2]
    (js,) = widget.export(tmp_path / "l.json", "json")
    back = read_landmarks_json(js)
    drawn = np.array([[10.0, 20.0], [150.0, 20.0]])  # (x, y)
    assert any(p.shape == drawn.shape and np.allclose(p, drawn) for p in back[2][RIDGE])
    (csv,) = widget.export(tmp_path / "l.csv", "csv")
    assert csv.read_text().startswith("frame,class_id")
    xmls = widget.export(tmp_path / "xml", "xml")
    assert len(xmls) == 1
    assert any(p.shape == drawn.shape and np.allclose(p, drawn) for p in read_p2ilf_xml(xmls[0]).curves[RIDGE])


def test_widget_reports_missing_checkpoint(make_napari_viewer, monkeypatch):
    from napari_surgseg.widgets import liver as liver_mod

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True)
    widget = liver_mod.LiverLandmarksWidget(viewer)
    errors = []
    monkeypatch.setattr(liver_mod, "show_error", errors.append)
    widget.checkpoint_edit.value = "/nonexistent/model.pt"
    assert widget.run() is None
    assert errors and "checkpoint not found" in errors[0]
