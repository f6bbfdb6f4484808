"""Video loader and overlay export dock widgets, driven like a user would."""
from __future__ import annotations

import time

import numpy as np
import pytest

from _video_factory import frame_number, write_video

from napari_surgseg import _workers
from napari_surgseg.widgets import export_overlay, video_loader
from napari_surgseg.widgets.export_overlay import ExportOverlayWidget
from napari_surgseg.widgets.video_loader import VideoLoaderWidget
from surgseg_core.io import FrameSource, open_video

pytestmark = pytest.mark.gui


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", 30, width=160, height=96, fps=10)


@pytest.fixture
def messages(monkeypatch):
    """Capture the napari notifications the widgets send."""
    got = {"error": [], "info": []}
    for module in (_workers, video_loader, export_overlay):
        monkeypatch.setattr(module, "show_error", got["error"].append, raising=False)
        monkeypatch.setattr(module, "show_info", got["info"].append, raising=False)
    return got


def _decode_mp4(path):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def _loader(make_napari_viewer, qtbot, path):
    viewer = make_napari_viewer()
    widget = VideoLoaderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_path(path)
    qtbot.waitUntil(lambda: widget.metadata is not None, timeout=10000)
    return viewer, widget


def test_loader_shows_metadata_and_opens_range_with_stride_and_downscale(make_napari_viewer, qtbot, clip, messages):
    viewer, widget = _loader(make_napari_viewer, qtbot, clip)
    info = widget.info_label.text()
    assert "160x96" in info and "10 fps" in info and "30 frames" in info and "h264" in info
    widget.start_spin.setValue(4)
    widget.end_spin.setValue(20)
    widget.step_spin.setValue(3)
    widget.downscale_spin.setValue(2)
    widget.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert layer.name == "clip" and layer.rgb and tuple(layer.axis_labels) == ("t", "y", "x")
    assert isinstance(layer.data, FrameSource)
    assert layer.data.shape == (6, 48, 80, 3)  # frames 4, 7, ..., 19 at half size
    with open_video(clip, downscale=2) as full:
        for k in range(6):
            assert frame_number(layer.data[k]) == 4 + 3 * k
            np.testing.assert_array_equal(layer.data[k], full[4 + 3 * k])
    assert layer.metadata["step"] == 3 and layer.metadata["start"] == 4
    assert messages["error"] == []


def test_loader_range_in_seconds(make_napari_viewer, qtbot, clip, messages):
    viewer, widget = _loader(make_napari_viewer, qtbot, clip)
    widget.unit_combo.setCurrentText("seconds")
    widget.start_spin.setValue(0.5)
    widget.end_spin.setValue(1.5)
    widget.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert [frame_number(layer.data[k]) for k in range(len(layer.data))] == list(range(5, 15))


def test_loader_reports_bad_files_and_bad_ranges_as_notifications(make_napari_viewer, qtbot, tmp_path, clip, messages):
    viewer = make_napari_viewer()
    widget = VideoLoaderWidget(viewer)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 50)
    widget.set_path(bad)
    qtbot.waitUntil(lambda: len(messages["error"]) == 1, timeout=10000)
    assert "bad.mp4" in messages["error"][0]
    qtbot.waitUntil(lambda: widget.info_label.text().startswith("Cannot open"), timeout=5000)

    widget.path_edit.setText(str(clip))
    widget.start_spin.setValue(10)
    widget.end_spin.setValue(5)
    widget.open()
    assert "must be after start" in messages["error"][-1]
    assert len(viewer.layers) == 0


@pytest.mark.realdata
def test_loader_opens_a_real_frame_series_by_glob(make_napari_viewer, qtbot, messages):
    from PIL import Image

    from conftest import realdata_file

    folder = realdata_file("cholecseg8k_seq")  # frames and three kinds of masks side by side
    viewer, widget = _loader(make_napari_viewer, qtbot, folder / "frame_*_endo.png")
    assert "73 frames" in widget.info_label.text()
    widget.step_spin.setValue(10)
    widget.fps_spin.setValue(25)
    widget.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert layer.data.shape == (8, 480, 854, 3) and layer.metadata["fps"] == 25
    for k in (0, 3, 7):
        expected = np.asarray(Image.open(folder / f"frame_{561 + 10 * k}_endo.png").convert("RGB"))
        np.testing.assert_array_equal(layer.data[k], expected)
    assert messages["error"] == []


class _SlowVideo:
    """Array-like video that takes a while per frame, to cancel mid-export."""

    def __init__(self, n=60, h=32, w=32):
        self._frames = np.full((n, h, w, 3), 80, np.uint8)
        self.shape, self.dtype, self.ndim = self._frames.shape, self._frames.dtype, 4

    def __getitem__(self, key):
        time.sleep(0.03)
        return self._frames[key]


def test_export_widget_writes_overlay_with_layer_colours_and_points(make_napari_viewer, qtbot, clip, tmp_path, messages):
    viewer = make_napari_viewer()
    widget = ExportOverlayWidget(viewer)
    viewer.window.add_dock_widget(widget)
    (video,) = viewer.open(str(clip), plugin="napari-surgseg")
    labels_data = np.zeros((30, 96, 160), np.uint8)
    labels_data[:, 40:80, 60:150] = 1
    labels = viewer.add_labels(labels_data, name="tool mask")
    viewer.add_points(np.array([[5, 30.0, 20.0]]), name="tips", face_color="red")
    assert widget.image_combo.value is video  # filled from the viewer, no names hard-coded
    assert widget.out_edit.value == clip.parent / "clip_overlay.mp4"  # suggested next to the video
    widget.labels_combo.value = labels
    widget.points_combo.value = viewer.layers["tips"]
    widget.alpha_slider.value = 0.8
    out = tmp_path / "overlay.mp4"
    widget.out_edit.value = out
    widget.export_button.clicked.emit()
    qtbot.waitUntil(lambda: out.exists() and widget.export_button.enabled, timeout=30000)
    assert messages["error"] == []
    meta, frames = _decode_mp4(out)
    assert frames.shape == (30, 96, 160, 3) and meta["fps"] == 10
    src = open_video(clip)
    napari_rgb = np.asarray(labels.get_color(1))[:3] * 255
    inside = frames[:, 50:70, 80:140].reshape(30, -1, 3).mean(1)
    expected = 0.2 * src[:, 50:70, 80:140].reshape(30, -1, 3).mean(1) + 0.8 * napari_rgb
    np.testing.assert_allclose(inside, expected, atol=15)
    red = frames[5, 28:33, 18:23].reshape(-1, 3).mean(0)
    assert red[0] > 180 and red[1] < 80  # the red point on frame 5


def test_export_widget_cancel_and_missing_inputs(make_napari_viewer, qtbot, tmp_path, messages):
    viewer = make_napari_viewer()
    widget = ExportOverlayWidget(viewer)
    widget.export()
    assert "video (image) layer" in messages["error"][-1]

    viewer.add_image(_SlowVideo(), rgb=True, name="slow", contrast_limits=(0, 255))
    assert widget.image_combo.value is viewer.layers["slow"]  # refreshed when the layer was added
    widget.export()
    assert "output" in messages["error"][-1]

    out = tmp_path / "never.mp4"
    widget.out_edit.value = out
    widget.export()
    widget.worker.yielded.connect(lambda _: widget.cancel())  # cancel after the first frame
    qtbot.waitUntil(lambda: widget.export_button.enabled, timeout=30000)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert any("cancelled" in m for m in messages["info"])
    assert widget.status.value == "export stopped"


def test_widgets_dock_through_the_plugin_manifest_and_export(make_napari_viewer, qtbot, tmp_path, messages):
    """napari hands plugin widgets a proxy viewer; exporting must work through it."""
    viewer = make_napari_viewer()
    _, loader = viewer.window.add_plugin_dock_widget("napari-surgseg", "Load surgical video")
    _, exporter = viewer.window.add_plugin_dock_widget("napari-surgseg", "Export overlay video")
    assert isinstance(loader, VideoLoaderWidget) and isinstance(exporter, ExportOverlayWidget)
    viewer.add_image(np.full((3, 16, 16, 3), 90, np.uint8), rgb=True, name="frames")
    viewer.add_labels(np.ones((3, 16, 16), np.uint8), name="all tool")
    assert exporter.image_combo.value.name == "frames"
    exporter.labels_combo.value = exporter.labels_combo.choices[-1]
    exporter.out_edit.value = tmp_path / "o.mp4"
    exporter.export()
    qtbot.waitUntil(lambda: (tmp_path / "o.mp4").exists() and exporter.export_button.enabled, timeout=20000)
    assert messages["error"] == []
    _, frames = _decode_mp4(tmp_path / "o.mp4")
    assert frames.shape == (3, 16, 16, 3) and np.abs(frames.astype(int) - 90).mean() > 10  # coloured
