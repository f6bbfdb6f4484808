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
    widget.start_spin.value, widget.end_spin.value = 1, 2  # First..Last, both included
    _run(widget, qtbot)
    labels = widget.labels_layer.data
    assert labels.shape == (4, H, W)
    assert not labels[0].any() and not labels[3].any()  # outside the range
    for i in (1, 2):
        scores = [dice(labels[i] == c, frames[i].mask == c) for c in LANDMARK_CLASSES]
        assert np.nanmean(scores) > 0.3  # the trained model's curves land on the truth
    frames_with_paths = set(widget.shapes_layer.features["frame"])
    assert frames_with_paths == {1, 2}
    meta = widget.labels_layer.metadata["provenance"]
    assert meta["checkpoint_sha256"] and meta["model"]["encoder"] == "resnet18" and meta["method"] == "liver"
    assert widget.shapes_layer.metadata["provenance"]["postprocess"]["rdp_epsilon"] == 1.0
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


def test_whole_video_cancel_keeps_finished_frames(make_napari_viewer, qtbot, monkeypatch):
    """Cancel after the first batch of 4 frames: those frames stay, the rest are empty."""
    import time

    from surgseg_core.methods.liver import predict as predict_mod
    from surgseg_core.synth import generate_liver_scene

    from napari_surgseg.widgets.liver import LiverLandmarksWidget

    result, _, _ = trained_liver_model()
    viewer = make_napari_viewer()
    scene = generate_liver_scene(seed=41, n_frames=8, height=H, width=W)
    layer = viewer.add_image(np.stack([scene.frame(i).image for i in range(8)]), rgb=True)
    widget = LiverLandmarksWidget(viewer)
    widget.image_combo.value = layer
    widget.checkpoint_edit.value = str(result.best_checkpoint)
    widget.mode_combo.value = "whole video"
    original = predict_mod.LiverPredictor.predict
    calls = []

    def predict_then_cancel(self, *a, **k):
        out = original(self, *a, **k)
        calls.append(len(out))
        while widget._token is None:  # the token is set when run() returns
            time.sleep(0.01)
        widget.cancel()  # what the Cancel button does
        return out

    monkeypatch.setattr(predict_mod.LiverPredictor, "predict", predict_then_cancel)
    worker = widget.run()
    assert not widget.run_btn.enabled and widget.cancel_btn.enabled
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.run_btn.enabled, timeout=10_000)
    assert calls == [4]  # the second batch never ran
    labels = widget.labels_layer.data
    assert labels.shape == (8, H, W)
    assert all(labels[i].any() for i in range(4)) and not labels[4:].any()
    assert set(widget.shapes_layer.features["frame"]) <= {0, 1, 2, 3}
    assert "cancelled" in widget.status.value and "4 frame" in widget.status.value


def test_single_image_and_export_dialogs(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A 2-D RGB image (one P2ILF-style frame): 2-D layers, correction, and the
    export buttons writing where the file dialog points."""
    from qtpy.QtWidgets import QFileDialog

    from surgseg_core.methods.liver import SILHOUETTE
    from surgseg_core.methods.liver.export import read_landmarks_json
    from surgseg_core.synth import generate_liver_scene

    from napari_surgseg.widgets import liver as liver_mod

    result, _, _ = trained_liver_model()
    viewer = make_napari_viewer()
    frame = generate_liver_scene(seed=42, n_frames=1, height=H, width=W).frame(0)
    layer = viewer.add_image(frame.image, rgb=True, name="one image")
    widget = liver_mod.LiverLandmarksWidget(viewer)
    widget.image_combo.value = layer
    widget.checkpoint_edit.value = str(result.best_checkpoint)
    widget.mode_combo.value = "whole video"  # ignored for a single image
    _run(widget, qtbot)
    assert widget.labels_layer.data.shape == (H, W) and widget.labels_layer.data.any()
    assert widget.shapes_layer.ndim == 2 and len(widget.shapes_layer.data) > 0
    # replace everything by one drawn silhouette and store it as the correction
    widget.shapes_layer.data = []
    widget.shapes_layer.add_paths([np.array([[60.0, 10.0], [60.0, 140.0]])])
    widget.shapes_layer.features = {"class_id": np.array([SILHOUETTE]), "frame": np.array([0])}
    assert widget.use_as_correction() == 0
    assert set(np.unique(widget.labels_layer.data)) == {0, SILHOUETTE}
    assert (widget.labels_layer.data[60, 10:141] == SILHOUETTE).all()
    # export buttons: the dialogs are answered by the test
    infos, errors = [], []
    monkeypatch.setattr(liver_mod, "show_info", infos.append)
    monkeypatch.setattr(liver_mod, "show_error", errors.append)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(tmp_path / "one.json"), "")))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(tmp_path / "xml")))
    widget.json_btn.clicked.emit()
    widget.xml_btn.clicked.emit()
    assert not errors, errors
    back = read_landmarks_json(tmp_path / "one.json")
    assert [p.tolist() for p in back[0][SILHOUETTE]] == [[[10.0, 60.0], [140.0, 60.0]]]
    assert list((tmp_path / "xml").glob("*.xml")) and len(infos) == 2
    # a dialog closed without a choice writes nothing and says nothing
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: ("", "")))
    widget.csv_btn.clicked.emit()
    assert len(infos) == 2 and not errors and not list(tmp_path.glob("*.csv"))


def test_hand_drawn_curves_get_the_chosen_class_and_their_frame(liver_widget, qtbot):
    """A user draws a new path on frame 3 with napari's path tool: it takes
    the class chosen in the widget (not background) and the frame it was drawn
    on, so "Use as correction" and exports include it; selected curves can be
    re-classed."""
    from surgseg_core.methods.liver import LIGAMENT, RIDGE

    viewer, widget, frames, _ = liver_widget
    widget.mode_combo.value = "current frame"
    viewer.dims.set_current_step(0, 1)
    _run(widget, qtbot)
    sl = widget.shapes_layer
    widget.class_combo.value = LIGAMENT
    n_before = len(sl.data)
    sl.add_paths([np.array([[3, 30.0, 20.0], [3, 90.0, 25.0]])])  # what drawing does: no features given
    assert int(sl.features["class_id"].iloc[-1]) == LIGAMENT
    assert np.allclose(sl.edge_color[-1][:3], (0.0, 0.0, 1.0))
    per_frame = widget.frame_polylines()
    assert [p.tolist() for p in per_frame[3][LIGAMENT]] == [[[20.0, 30.0], [25.0, 90.0]]]
    viewer.dims.set_current_step(0, 3)
    assert widget.use_as_correction() == 3
    assert (widget.labels_layer.data[3, 30:91, 22] == LIGAMENT).any()
    # re-class the drawn curve as ridge
    widget.class_combo.value = RIDGE
    sl.selected_data = {n_before}
    assert widget.set_selected_class() == 1
    assert int(sl.features["class_id"].iloc[n_before]) == RIDGE
    assert RIDGE in widget.frame_polylines()[3] and widget.frame_polylines()[3][RIDGE]
    # a new run on frame 1 keeps the hand-drawn curve of frame 3
    viewer.dims.set_current_step(0, 1)
    _run(widget, qtbot)
    assert widget.frame_polylines()[3][RIDGE]


def test_curves_shown_in_chunks_and_results_follow_their_video(liver_widget, qtbot):
    """Many curves go into the Shapes layer a chunk per event-loop turn (the
    window stays live); a second video of the same size gets its own layers."""
    from qtpy.QtCore import QTimer

    viewer, widget, frames, _ = liver_widget
    widget.PATH_CHUNK = 2
    widget.mode_combo.value = "whole video"
    worker = widget.run()
    sl = widget.shapes_layer  # made before the worker starts; the worker fills the labels
    real_add = sl.add_paths
    chunks, ticks_seen = [], []
    ticks = []

    def add_paths(data, **kw):
        ticks_seen.append(len(ticks))
        QTimer.singleShot(0, lambda: ticks.append(1))  # runs only if the loop turns before the next chunk
        chunks.append(len(data))
        return real_add(data, **kw)

    sl.add_paths = add_paths
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.status.value.startswith("landmarks on"), timeout=30_000)
    assert len(chunks) >= 3 and max(chunks) == 2
    assert ticks_seen == list(range(len(chunks)))  # the event loop turned before every further chunk
    assert len(sl.data) == sum(chunks) == len(sl.features)
    assert set(sl.features["frame"]) == {0, 1, 2, 3} and widget.run_btn.enabled
    # redoing one frame replaces only that frame's paths
    others = {k: np.asarray(d).copy() for k, d in enumerate(sl.data) if int(np.asarray(d)[0, 0]) != 2}
    widget.mode_combo.value = "current frame"
    viewer.dims.set_current_step(0, 2)
    n_chunks = len(chunks)
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.status.value.startswith("landmarks on 1"), timeout=30_000)
    added = sum(chunks[n_chunks:])
    assert len(sl.data) == len(others) + added
    kept = [np.asarray(d) for d in sl.data if int(np.asarray(d)[0, 0]) != 2]
    assert len(kept) == len(others) and all(np.array_equal(a, b) for a, b in zip(kept, others.values()))
    colour_of = {1: (1.0, 1.0, 0.0), 2: (1.0, 0.0, 0.0), 3: (0.0, 0.0, 1.0)}
    for cls, frame, edge in zip(sl.features["class_id"], sl.features["frame"], sl.edge_color):
        assert tuple(np.round(edge[:3], 2)) == colour_of[int(cls)]
    assert (sl.features["frame"] == 2).sum() == added
    first_labels = widget.labels_layer
    before = np.asarray(first_labels.data).copy()
    # another video of the same size: new layers, the first video's untouched
    other = viewer.add_image(np.stack([f.image[::-1] for f in frames]), rgb=True, name="other clip")
    widget.reset_choices()
    widget.image_combo.value = other
    widget.mode_combo.value = "current frame"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.status.value.startswith("landmarks on"), timeout=30_000)
    assert widget.labels_layer is not first_labels and widget.labels_layer.name == "other clip liver labels"
    assert np.array_equal(np.asarray(first_labels.data), before)


def test_predict_frames_with_a_sink_keeps_nothing():
    from surgseg_core.methods.liver.predict import LiverPredictor, predict_frames
    from surgseg_core.synth import generate_liver_scene

    result, _, _ = trained_liver_model()
    predictor = LiverPredictor.from_checkpoint(result.best_checkpoint)
    scene = generate_liver_scene(seed=43, n_frames=5, height=H, width=W)
    frames = [scene.frame(i).image for i in range(5)]
    seen = {}
    kept = predict_frames(predictor, frames, [0, 2, 4], batch_size=2, sink=lambda i, p: seen.__setitem__(i, p))
    assert kept == {} and sorted(seen) == [0, 2, 4]
    plain = predict_frames(predictor, frames, [0, 2, 4], batch_size=2)
    assert all(np.array_equal(plain[i].result.dilated, seen[i].result.dilated) for i in seen)


def test_predictor_takes_grey_and_16_bit_frames():
    """A napari layer may hold grey or 16-bit frames: they are converted, not
    clipped (the same picture in 12 bits gives the same result as in 8 bits)."""
    from surgseg_core.methods.liver.predict import LiverPredictor
    from surgseg_core.synth import generate_liver_scene

    result, _, _ = trained_liver_model()
    predictor = LiverPredictor.from_checkpoint(result.best_checkpoint)
    rgb = generate_liver_scene(seed=44, n_frames=1, height=H, width=W).frame(0).image
    twelve_bit = np.rint(rgb * (4095 / 255)).astype(np.uint16)  # the same picture in 0..4095
    a, b = predictor.predict([rgb, twelve_bit])
    assert np.array_equal(a.raw_full, b.raw_full)
    (grey,) = predictor.predict([rgb[..., 1]])
    assert grey.raw_full.shape == (H, W) and grey.result.dilated.shape == (H, W)
