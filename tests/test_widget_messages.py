"""Messages that fit and failures that leave nothing behind (under Xvfb).

* a long status message (a path plus "download with ...") never widens a
  dock or the window: every widget's status line is a StatusLabel;
* a failed run leaves no result layer behind and keeps the selected layer
  (the prompt layer stays where the next click lands);
* checkpoint mistakes in the liver widget (empty field, folder, a file that
  is not a checkpoint) give one notification naming the file and the fix,
  and the status line says so.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("napari")
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")

pytestmark = pytest.mark.gui

LONG_MESSAGE = (
    "failed: weights 'sam2.1_hiera_large' not in the cache "
    "/home/researcher/.local/share/surgseg/weights/official/sam2.1_hiera_large/sam2.1_hiera_large.pt: "
    "download with `surgseg weights download sam2.1_hiera_large` (needs internet) or import a file you have with "
    "`surgseg weights import /path/to/sam2.1_hiera_large.pt --name sam2.1_hiera_large`; "
    + "/very/long/path/without/any/spaces_" * 30
)


def _widget_factories():
    from napari_surgseg.widgets.anatomy import AnatomyWidget
    from napari_surgseg.widgets.corrections import CorrectionsWidget
    from napari_surgseg.widgets.export_overlay import ExportOverlayWidget
    from napari_surgseg.widgets.liver import LiverLandmarksWidget
    from napari_surgseg.widgets.sam2_track import Sam2TrackWidget
    from napari_surgseg.widgets.training import TrainingWidget
    from napari_surgseg.widgets.video_loader import VideoLoaderWidget

    return {
        "liver": LiverLandmarksWidget, "sam2_track": Sam2TrackWidget, "training": TrainingWidget,
        "corrections": CorrectionsWidget, "export_overlay": ExportOverlayWidget, "video_loader": VideoLoaderWidget,
        "anatomy": AnatomyWidget,
    }


def _sizes(viewer, dock):
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    return dock.width(), viewer.window._qt_window.width()


def _dock(viewer, widget):
    return viewer.window.add_dock_widget(widget, area="right")


@pytest.mark.parametrize("name", ["liver", "sam2_track", "training", "corrections", "export_overlay",
                                  "video_loader", "anatomy"])
def test_long_status_message_never_widens_the_dock_or_window(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((3, 32, 32, 3), np.uint8), rgb=True, name="clip")
    widget = _widget_factories()[name](viewer)
    dock = _dock(viewer, widget)
    qtbot.wait(100)
    dock_w, window_w = _sizes(viewer, dock)
    widget.status.value = LONG_MESSAGE
    qtbot.wait(100)
    assert _sizes(viewer, dock) == (dock_w, window_w)
    assert widget.status.value == LONG_MESSAGE  # the full text stays readable (value, tooltip)
    assert widget.status.native.toolTip() == LONG_MESSAGE
    shown = widget.status.shown.replace("\u200b", "")
    assert len(shown) < len(LONG_MESSAGE) and shown.startswith("failed: weights") and "\u2026" in shown
    label = widget.status.native
    assert label.width() <= dock.width() and label.wordWrap()


def test_a_plain_label_would_widen_the_dock(make_napari_viewer, qtbot):
    """The measurement above can fail: the same text in a plain magicgui Label widens the dock."""
    from magicgui.widgets import Container, Label

    viewer = make_napari_viewer(show=True)
    plain = Label(value="")
    box = Container(widgets=[plain])
    dock = _dock(viewer, box)
    qtbot.wait(100)
    dock_w, window_w = _sizes(viewer, dock)
    plain.value = LONG_MESSAGE
    qtbot.wait(100)
    assert _sizes(viewer, dock)[0] > dock_w


def test_large_loss_plot_png_does_not_widen_the_dock(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from napari_surgseg.widgets.training import TrainingWidget

    viewer = make_napari_viewer(show=True)
    widget = TrainingWidget(viewer)
    dock = _dock(viewer, widget)
    qtbot.wait(100)
    before = _sizes(viewer, dock)
    png = tmp_path / "curves.png"
    Image.fromarray(np.full((700, 2400, 3), 200, np.uint8)).save(png)
    widget.plot.show_png(str(png))
    qtbot.wait(100)
    assert _sizes(viewer, dock) == before
    assert widget.plot.pixmap().width() <= widget.plot.width()


# ------------------------------------------------------------------ failed runs leave no layers
@pytest.fixture
def sam2_widget(make_napari_viewer, tmp_path, monkeypatch):
    from napari_surgseg import _workers
    from napari_surgseg.widgets import sam2_track as mod

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "empty-weights"))  # no official weights here
    errors = []
    monkeypatch.setattr(_workers, "show_error", errors.append)
    monkeypatch.setattr(mod, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 48, 64, 3), np.uint8), rgb=True, name="clip")
    widget = mod.Sam2TrackWidget(viewer)
    missing = [value for value in widget.model_combo.choices if value[1] is not None]
    if not missing:
        pytest.skip("no official SAM2 weights listed")
    widget.model_combo.value = missing[0]
    prompts = widget.new_prompt_layer()
    widget.obj_spin.value = 1
    prompts.add([[2, 20, 30]])
    viewer.dims.set_current_step(0, 2)
    return viewer, widget, prompts, errors


@pytest.mark.parametrize("action", ["preview", "track"])
def test_failed_sam2_run_leaves_no_layer_and_keeps_the_prompt_layer_selected(sam2_widget, qtbot, action):
    viewer, widget, prompts, errors = sam2_widget
    layers_before = list(viewer.layers)
    assert viewer.layers.selection.active is prompts
    getattr(widget, action)()
    assert viewer.layers.selection.active is prompts  # a new result layer does not take the selection
    qtbot.waitUntil(lambda: widget.track_button.enabled, timeout=120_000)
    qtbot.wait(50)
    assert list(viewer.layers) == layers_before
    assert viewer.layers.selection.active is prompts and set(viewer.layers.selection) == {prompts}
    assert widget.preview_layer is None and widget.result_layer is None
    assert len(errors) == 1 and "sam2" in errors[0].lower()
    assert widget.status.value.startswith("failed:") and widget.status.value[len("failed: "):] in errors[0]


# ------------------------------------------------------------------ liver checkpoint errors
@pytest.fixture
def liver(make_napari_viewer, monkeypatch):
    from napari_surgseg import _workers
    from napari_surgseg.widgets import liver as liver_mod

    errors = []
    monkeypatch.setattr(_workers, "show_error", errors.append)
    monkeypatch.setattr(liver_mod, "show_error", errors.append)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((12, 32, 32, 3), np.uint8), rgb=True, name="clip")
    widget = liver_mod.LiverLandmarksWidget(viewer)
    widget.image_combo.value = image
    widget.mode_combo.value = "whole video"
    return viewer, widget, image, errors


def test_liver_empty_checkpoint_field_says_choose_one(liver):
    viewer, widget, image, errors = liver
    assert widget.run() is None
    assert len(errors) == 1 and "no checkpoint chosen" in errors[0] and os.getcwd() not in errors[0]
    assert "registered model" in errors[0] and "best.pt" in errors[0]
    assert widget.status.value.startswith("failed: no checkpoint chosen")
    assert list(viewer.layers) == [image]


def test_liver_folder_as_checkpoint_says_choose_the_file_inside(liver, tmp_path):
    viewer, widget, image, errors = liver
    widget.checkpoint_edit.value = str(tmp_path)
    assert widget.run() is None
    assert len(errors) == 1 and str(tmp_path) in errors[0] and "is a folder" in errors[0] and "best.pt" in errors[0]
    assert "is a folder" in widget.status.value and list(viewer.layers) == [image]


def test_liver_non_checkpoint_file_one_clear_error_no_layers_status_updated(liver, qtbot, tmp_path):
    viewer, widget, image, errors = liver
    bogus = tmp_path / "notes.pt"
    bogus.write_text("these are my notes, not a model\n" * 10)
    viewer.layers.selection.active = image
    widget.checkpoint_edit.value = str(bogus)
    worker = widget.run()
    assert worker is not None and widget.status.value == "running on 12 frame(s)..."
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.run_btn.enabled, timeout=10_000)
    assert len(errors) == 1, errors
    message = errors[0]
    assert str(bogus) in message and "not a PyTorch checkpoint" in message and "liver model checkpoint" in message
    assert "weights_only" not in message and "Weights only load failed" not in message
    assert widget.status.value.startswith("failed:") and "running on" not in widget.status.value
    assert str(bogus) in widget.status.value
    assert list(viewer.layers) == [image]  # the empty labels/curves layers of the failed run are gone
    assert set(viewer.layers.selection) == {image}
