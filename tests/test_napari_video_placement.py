"""Ranged / strided / downscaled video layers sit where they belong in the full
video, the layers made from them line up, the slider shows the video time,
and a truncated file opens up to its damage with a warning."""
from __future__ import annotations

import numpy as np
import pytest

from _video_factory import frame_number, write_vfr_video, write_video

from napari_surgseg._time_display import text_overlay
from napari_surgseg.widgets.video_loader import VideoLoaderWidget
from surgseg_core.io import FrameSource
from surgseg_core.io.metadata import format_time

pytestmark = pytest.mark.gui
PLUGIN = "napari-surgseg"


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", 30, width=160, height=96, fps=10)


def _shown(layer) -> np.ndarray:
    return np.asarray(layer._slice.image.raw)


def _open_ranged(viewer, qtbot, path, **spins):
    widget = VideoLoaderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_path(path)
    qtbot.waitUntil(lambda: widget.metadata is not None, timeout=10000)
    for name, value in spins.items():
        getattr(widget, f"{name}_spin").setValue(value)
    n_before = len(viewer.layers)
    widget.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == n_before + 1, timeout=10000)
    return widget, viewer.layers[-1]


def test_ranged_layer_lines_up_with_the_full_video(make_napari_viewer, qtbot, clip):
    viewer = make_napari_viewer()
    (full,) = viewer.open(str(clip), plugin=PLUGIN)
    _, ranged = _open_ranged(viewer, qtbot, clip, start=4, end=20, step=3, downscale=2)
    assert ranged.data.shape == (6, 48, 80, 3)  # source frames 4, 7, ..., 19 at half size
    np.testing.assert_allclose(full.scale, 1) and np.testing.assert_allclose(full.translate, 0)
    np.testing.assert_allclose(ranged.scale, (3, 2, 2))
    np.testing.assert_allclose(ranged.translate, (4, 0.5, 0.5))  # half-size pixel k covers source 2k, 2k+1

    for source_frame in (4, 13, 19):  # wherever the slider is, both layers show the same source frame
        viewer.dims.set_point(0, source_frame)
        assert frame_number(_shown(full)) == source_frame
        assert frame_number(_shown(ranged)) == source_frame
    # the same place in space: the centre of source pixels (2j, 2i)..(2j+1, 2i+1) is half-size pixel (j, i)
    np.testing.assert_allclose(ranged.world_to_data((13, 2 * 10 + 0.5, 2 * 30 + 0.5)), (3, 10, 30))
    np.testing.assert_allclose(full.world_to_data((13, 20.5, 60.5)), (13, 20.5, 60.5))


def test_result_layers_and_prompts_follow_a_ranged_video(make_napari_viewer, qtbot, clip):
    from napari.layers import Points
    from qtpy.QtWidgets import QListWidgetItem

    from napari_surgseg.widgets.base.layers import frame_of, placement_of
    from napari_surgseg.widgets.corrections import CorrectionsWidget, corrections_kwargs
    from napari_surgseg.widgets.liver import LiverLandmarksWidget
    from napari_surgseg.widgets.sam2_track import prompts_from_layer

    viewer = make_napari_viewer()
    viewer.open(str(clip), plugin=PLUGIN)
    _, ranged = _open_ranged(viewer, qtbot, clip, start=4, end=20, step=3, downscale=2)

    # SAM2: a click in world coordinates becomes a prompt on the ranged layer's own frame and pixels
    prompts = Points(np.zeros((0, 3)), ndim=3, features={"obj_id": np.zeros(0, int), "positive": np.zeros(0, bool)},
                     **placement_of(ranged))
    viewer.add_layer(prompts)
    prompts.data = np.array([prompts.world_to_data((10.0, 40.5, 60.5))])
    prompts.features = {"obj_id": [1], "positive": [True]}
    (prompt,) = prompts_from_layer(prompts, ranged)
    assert prompt["frame"] == 2  # source frame 10 = 4 + 3 * 2
    np.testing.assert_allclose(prompt["points"][0], (30, 20))  # (x, y) at half size
    # and corrections export the points on the ranged layer's frames and pixels too
    np.testing.assert_allclose(corrections_kwargs(ranged, points=prompts)["points"], [[2, 20, 30]])

    # liver: the result layers take the video's placement; "current frame" is the video's own frame
    liver = LiverLandmarksWidget(viewer)
    liver.image_combo.value = ranged
    liver._ensure_layers(ranged, False, len(ranged.data), ranged.data.shape[1:3])
    for layer in (liver.labels_layer, liver.shapes_layer):
        np.testing.assert_allclose(layer.scale, ranged.scale)
        np.testing.assert_allclose(layer.translate, ranged.translate)
    viewer.dims.set_point(0, 16)
    assert liver._current_frame(False) == frame_of(viewer, ranged) == 4

    # corrections: a ranked frame of a ranged labels layer moves the slider to that frame's place
    corrections = CorrectionsWidget(viewer)
    corrections._ranked_layer = liver.labels_layer
    item = QListWidgetItem("frame 5")
    item.setData(256, 5)
    corrections._jump_to(item)
    assert viewer.dims.point[0] == pytest.approx(4 + 3 * 5)
    assert frame_number(_shown(ranged)) == 19


def test_time_of_the_slider_position_is_shown(make_napari_viewer, qtbot, clip):
    viewer = make_napari_viewer()
    (full,) = viewer.open(str(clip), plugin=PLUGIN)
    overlay = text_overlay(viewer)
    viewer.dims.set_point(0, 12)
    assert overlay.visible and overlay.text.startswith("00:01.20") and "frame 12 of clip" in overlay.text
    _, ranged = _open_ranged(viewer, qtbot, clip, start=4, end=20, step=3)
    viewer.layers.selection.active = ranged
    viewer.dims.set_point(0, 7)
    assert overlay.text.startswith("00:00.70") and f"frame 7 of {ranged.name}" in overlay.text
    viewer.layers.clear()
    assert not overlay.visible  # no video, no time


def test_time_comes_from_the_file_timestamps(make_napari_viewer, tmp_path):
    times = [0.0, 0.1, 0.5, 0.55, 61.25]  # variable frame rate: no fps gives these
    path = write_vfr_video(tmp_path / "vfr.mp4", times)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    overlay = text_overlay(viewer)
    for i, t in enumerate(times):
        viewer.dims.set_point(0, i)
        assert overlay.text.startswith(format_time(t)), (i, overlay.text)
    assert overlay.text.startswith("01:01.25")


def test_format_time():
    assert format_time(0) == "00:00.00"
    assert format_time(5.004) == "00:05.00"
    assert format_time(59.999) == "01:00.00"
    assert format_time(3725.456) == "1:02:05.46"
    assert format_time(None) == "--:--.--"


def test_truncated_video_opens_to_its_damage_with_a_warning(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", warnings.append)
    good = write_video(tmp_path / "rec.mp4", 50, gop=12, extra=["-movflags", "+faststart"])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(cut), plugin=PLUGIN)
    n = len(layer.data)
    assert isinstance(layer.data, FrameSource) and 5 < n < 50
    last = layer.metadata["timestamps"][-1]
    assert len(warnings) == 1 and "cut.mp4" in warnings[0]
    assert f"after frame {n - 1} ({format_time(last)}, the last good frame)" in warnings[0]
    viewer.dims.set_point(0, n - 1)
    assert frame_number(_shown(layer)) == n - 1  # the last good frame displays

    # the loader says it before opening, and opens a range inside the readable part
    widget, part = _open_ranged(viewer, qtbot, cut, start=2, end=n)
    assert "Damaged" in widget.info_label.text() and f"frames 0-{n - 1} are readable" in widget.info_label.text()
    assert [frame_number(f) for f in part.data] == list(range(2, n))
    assert len(warnings) == 2
