"""Exporting corrections exports what was edited: frames painted on or
whose points were added, moved or removed (the layers' edit records), not
every frame with labels or points; where no edit record exists, every item
says why its frame is included."""
from __future__ import annotations

import json

import numpy as np

from surgseg_core.datasets import corrected_frame_reasons, export_corrections
from surgseg_core.datasets.corrections import (
    REASON_HAS_LABELS, REASON_HAS_POINTS, REASON_LABELS_EDITED, REASON_POINTS_EDITED,
)

T, H, W = 5, 12, 16


def _frames():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (T, H, W, 3)).astype(np.uint8)


def test_reasons_use_edit_records():
    labels = np.ones((T, H, W), np.uint8)  # model output on every frame
    points = [[t, 2.0, 3.0] for t in range(T)]  # a point on every frame
    everything = corrected_frame_reasons(labels, T, points=points)
    assert list(everything) == list(range(T))
    assert everything[0] == [REASON_HAS_LABELS, REASON_HAS_POINTS]
    edited = corrected_frame_reasons(labels, T, points=points, edited_frames=[2], edited_point_frames=[4])
    assert edited == {2: [REASON_LABELS_EDITED], 4: [REASON_POINTS_EDITED]}
    # a record with no edits exports nothing from that layer
    assert corrected_frame_reasons(labels, T, points=points, edited_frames=[], edited_point_frames=[]) == {}


def test_export_writes_why_each_frame_is_included(tmp_path):
    labels = np.ones((T, H, W), np.uint8)
    out = export_corrections(tmp_path / "ds", frames=_frames(), labels=labels, points=[[1, 2.0, 3.0]],
                             edited_frames=[3], provenance={"source_video": "clip.mp4"})
    items = json.loads((out / "provenance.json").read_text())["items"]
    assert {k: v["included_because"] for k, v in items.items()} == {
        "clip_f000001": REASON_HAS_POINTS, "clip_f000003": REASON_LABELS_EDITED}


def test_widget_exports_only_edited_frames(make_napari_viewer, qtbot, tmp_path):
    from napari_surgseg.widgets.corrections import CorrectionsWidget

    viewer = make_napari_viewer()
    viewer.add_image(_frames(), name="clip", rgb=True)
    loaded = viewer.add_points([[t, 3.0, 4.0] for t in range(T)], name="tracked points")  # unknown history
    widget = CorrectionsWidget(viewer)
    labels = viewer.add_labels(np.zeros((T, H, W), np.uint8), name="masks")  # recorded from the start
    labels.data[:] = 1  # a model fills every frame (no paint events: not an edit)
    labels.refresh()
    labels.paint((2, 5, 5), 2, refresh=True)  # the user's brush on frame 2
    points = viewer.add_points(np.zeros((0, 3)), ndim=3, name="clicks")
    points.add([[4, 6.0, 7.0]])
    points.add([[1, 6.0, 7.0]])
    points.selected_data = {1}
    points.remove_selected()  # a point added then removed on frame 1: still an edit of frame 1
    assert labels.metadata["edited_frames"] == [2] and points.metadata["edited_frames"] == [1, 4]
    assert "edited_frames" not in loaded.metadata

    widget.image_combo.value = viewer.layers["clip"]
    widget.labels_combo.value = labels
    widget.points_combo.value = points
    widget.out_edit.value = str(tmp_path / "ds")
    worker = widget.export()
    with qtbot.waitSignal(worker.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: widget.last_export is not None, timeout=5000)
    assert widget.last_export == {1: [REASON_POINTS_EDITED], 2: [REASON_LABELS_EDITED],
                                  4: [REASON_POINTS_EDITED]}
    assert sorted(p.name for p in (tmp_path / "ds" / "images").iterdir()) == [
        "clip_f000001.png", "clip_f000002.png", "clip_f000004.png"]
    assert "3 frame(s)" in widget.status.value

    # a points layer with unknown history: every frame with points, and the status says why
    widget.labels_combo.value = None
    widget.points_combo.value = loaded
    widget.out_edit.value = str(tmp_path / "ds2")
    worker = widget.export()
    with qtbot.waitSignal(worker.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: widget.last_export is not None and len(widget.last_export) == T, timeout=5000)
    assert f"{T} has points (no edit record" in widget.status.value
