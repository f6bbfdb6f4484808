"""The method-widget base (napari_surgseg/widgets/base): result layers lie on
their video (scale/translate), the weights picker lists one method's (and
variant's) weights, one frame-range convention, runs with cancel and a model
cache; class names, colours and result kind come from the method's spec."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("napari")
os.environ.setdefault("QT_QPA_PLATFORM", "xcb")

from surgseg_core.errors import Cancelled, ConfigError, DatasetError, SurgsegError  # noqa: E402

# ------------------------------------------------------------------ frame range (no viewer)


def test_frame_range_is_first_to_last_both_included():
    from napari_surgseg.widgets.base import resolve_range

    assert resolve_range(0, -1, 10) == (0, 9)  # -1: to the end
    assert resolve_range(2, 5, 10) == (2, 5)
    assert resolve_range(3, 3, 10) == (3, 3)  # one frame
    assert resolve_range(2, 5, 10, include=8) == (2, 8)  # widened to hold a frame (re-propagation start)
    assert resolve_range(4, 5, 10, include=1) == (1, 5)
    with pytest.raises(SurgsegError, match="First frame 6 is after Last frame 3"):
        resolve_range(6, 3, 10)
    with pytest.raises(SurgsegError, match=r"outside the video \(0\.\.9\)"):
        resolve_range(0, 10, 10)
    with pytest.raises(SurgsegError, match="no frames"):
        resolve_range(0, -1, 0)


def test_frame_range_widget_reads_its_spin_boxes():
    from napari_surgseg.widgets.base import FrameRange

    fr = FrameRange()
    assert fr.resolve(7) == (0, 6)
    fr.set(2, 4)
    assert (fr.start_spin.value, fr.end_spin.value) == (2, 4) and fr.resolve(7) == (2, 4)
    assert fr.widgets == [fr.start_spin, fr.end_spin]
    fr.set(5, -1)
    assert fr.resolve(7) == (5, 6)


# ------------------------------------------------------------------ weights picker (no viewer)
@pytest.fixture
def registry(tmp_path, monkeypatch):
    from surgseg_core.weights import register_checkpoint

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    for name, method, variant in [("liver-a", "liver", None), ("sam2-ft", "sam2", None),
                                  ("rp-ft", "sam2", "rpsam2"), ("f2-ft", "f2paseg", "f2paseg")]:
        path = tmp_path / f"{name}.pt"
        path.write_bytes(name.encode() * 10)
        register_checkpoint(path, name=name, method=method, variant=variant)
    return tmp_path / "weights"


def _names(choices):
    return [label for label, _ in choices]


def test_weights_picker_lists_one_method_and_variant(registry):
    from surgseg_core.weights import OFFICIAL

    from napari_surgseg.widgets.base import weights_choices

    liver = weights_choices("liver")()
    assert _names(liver) == ["liver-a"] and liver[0][1].method == "liver"
    plain_sam2 = _names(weights_choices("sam2", variant=None)())
    assert "sam2-ft" in plain_sam2 and "rp-ft" not in plain_sam2 and "liver-a" not in plain_sam2
    assert set(OFFICIAL) <= set(plain_sam2)  # official SAM2 checkpoints are plain SAM2 (listed, even not downloaded)
    assert _names(weights_choices("sam2", variant="rpsam2")()) == ["rp-ft"]
    every_sam2 = _names(weights_choices("sam2")())
    assert {"sam2-ft", "rp-ft"} <= set(every_sam2)
    # only files present (official ones are not downloaded here), custom items, fixed entries around them
    present = weights_choices("sam2", variant=None, present_only=True, item=lambda e: (e.name.upper(), e.path),
                              before=[("(file below)", None)], after=[("random", "r")])()
    from surgseg_core.weights.bundled import bundled_entries

    bundled = [e.name.upper() for e in bundled_entries() if e.method == "sam2"]  # the demo SAM2 in sample_data/
    assert _names(present) == ["(file below)", "SAM2-FT", *bundled, "random"]
    assert present[1][1].endswith("sam2-ft.pt")


def test_weights_picker_reads_new_weights_and_survives_a_broken_registry(registry, tmp_path):
    from surgseg_core.weights import register_checkpoint

    from napari_surgseg.widgets.base import weights_choices

    choices = weights_choices("liver", after=[("(file)", None)])
    assert _names(choices()) == ["liver-a", "(file)"]
    path = tmp_path / "liver-b.pt"
    path.write_bytes(b"b" * 40)
    register_checkpoint(path, name="liver-b", method="liver")
    assert _names(choices()) == ["liver-a", "liver-b", "(file)"]  # re-read each time
    (registry / "registry.json").write_text("{not json")
    errors = []
    broken = weights_choices("liver", after=[("(file)", None)], on_error=errors.append)
    assert _names(broken()) == ["(file)"]
    assert len(errors) == 1 and "registry" in errors[0]


# ------------------------------------------------------------------ method specs
def test_classes_colours_and_result_kind_come_from_the_spec():
    from surgseg_core.methods.liver import CLASS_COLOURS, CLASS_NAMES
    from surgseg_core.training.method import MethodSpec, get_method

    liver = get_method("liver")
    assert liver.class_names == CLASS_NAMES and liver.class_colours == CLASS_COLOURS
    assert liver.result_kind == "curves" and liver.rasterize_curves is not None
    assert liver.train_two_stage is not None
    sam2 = get_method("sam2")
    assert sam2.result_kind == "objects" and sam2.class_names == {} and sam2.train_two_stage is None
    with pytest.raises(ConfigError, match="result_kind"):
        MethodSpec(name="bad", build_model=None, build_datasets=None, loss=None, metrics=None, result_kind="blobs")


def test_corrections_export_takes_registered_methods_only(tmp_path):
    from surgseg_core.datasets import export_corrections

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    labels = np.ones((2, 8, 8), np.uint8)
    with pytest.raises(DatasetError, match="registered method"):
        export_corrections(tmp_path / "x", frames=frames, labels=labels, method="nonsense")
    out = export_corrections(tmp_path / "s", frames=frames, labels=labels, method="sam2")
    import json

    assert json.loads((out / "provenance.json").read_text())["method"] == "sam2"


def test_cli_two_stage_training_only_for_methods_that_have_it(tmp_path, capsys):
    from surgseg_core.cli.main import main

    code = main(["train", "sam2", "--run-dir", str(tmp_path / "run"), "--fine-tune-set", "lr=1e-5"])
    err = capsys.readouterr().err
    assert code == 1 and "'sam2' has no two-stage training" in err and "liver" in err.split("methods with one:")[1]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ with a viewer
pytestmark_gui = pytest.mark.gui


@pytest.fixture
def viewer_and_video(make_napari_viewer):
    viewer = make_napari_viewer()
    # a ranged, strided, downscaled video: source frames 10, 13, ...; half size
    video = viewer.add_image(np.zeros((5, 16, 20, 3), np.uint8), rgb=True, name="clip",
                             scale=(3.0, 2.0, 2.0), translate=(10.0, 0.5, 0.5),
                             metadata={"source_path": "/videos/case1.mp4"})
    return viewer, video


@pytestmark_gui
def test_result_layers_lie_on_their_video_and_keep_the_selection(viewer_and_video):
    from napari.layers import Labels, Points, Shapes

    from napari_surgseg._autosave import watcher_of
    from napari_surgseg.widgets.base import (
        add_labels_result, add_points_result, add_shapes_result, frame_of, points_on,
    )

    viewer, video = viewer_and_video
    clicks = viewer.add_points(np.zeros((0, 3)), ndim=3, name="my clicks")
    assert viewer.layers.selection.active is clicks
    labels = add_labels_result(viewer, video, np.zeros((5, 16, 20), np.uint8), "masks", metadata={"k": 1})
    points = add_points_result(viewer, video, "tips", features={"cls": np.zeros(0, int)})
    shapes = add_shapes_result(viewer, video, "curves", features={"class_id": np.zeros(0, int)})
    assert viewer.layers.selection.active is clicks  # results never take the selection
    for layer, kind in ((labels, Labels), (points, Points), (shapes, Shapes)):
        assert isinstance(layer, kind) and layer in viewer.layers
        np.testing.assert_allclose(layer.scale, video.scale)
        np.testing.assert_allclose(layer.translate, video.translate)
        assert tuple(layer.axis_labels) == ("t", "y", "x")
        assert watcher_of(layer) is not None  # autosaved beside the video
        assert watcher_of(layer).source == "/videos/case1.mp4"
    assert labels.metadata["k"] == 1 and list(points.features.columns) == ["cls"]
    assert list(shapes.features.columns) == ["class_id"]
    # a point placed at world (16, 9.5, 20.5) is source frame 16 = layer frame 2, pixel (4.5, 10)
    points.data = np.array([points.world_to_data((16.0, 9.5, 20.5))])
    np.testing.assert_allclose(points_on(points, video), [[2, 4.5, 10]])
    viewer.dims.set_point(0, 16)
    assert frame_of(viewer, labels) == frame_of(viewer, video) == 2
    # select=True: a layer the user works in next (prompt layers) becomes the active one
    boxes = add_shapes_result(viewer, video, "boxes", select=True)
    assert viewer.layers.selection.active is boxes


@pytestmark_gui
def test_result_layers_of_a_single_image_and_discard(make_napari_viewer):
    from napari_surgseg._autosave import watcher_of
    from napari_surgseg.widgets.base import add_labels_result, discard_layers, provenance_of, set_provenance

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((12, 10, 3), np.uint8), rgb=True, scale=(0.5, 0.25), translate=(3, 4))
    labels = add_labels_result(viewer, image, np.zeros((12, 10), np.uint8), "one")
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (3, 4))
    assert tuple(labels.axis_labels) == ("y", "x")
    assert set_provenance(labels, "liver", {"checkpoint": "a.pt"}) == {"method": "liver", "checkpoint": "a.pt"}
    assert provenance_of(labels)["checkpoint"] == "a.pt" and labels.metadata["provenance"]["method"] == "liver"
    discard_layers(viewer, [labels, None])
    assert labels not in viewer.layers and watcher_of(labels) is None


def _shown(combo) -> list:
    """The texts a combo box shows."""
    return [combo.native.itemText(i) for i in range(combo.native.count())]


@pytestmark_gui
def test_method_widget_takes_classes_and_colours_from_its_spec(make_napari_viewer, registry):
    from napari_surgseg.widgets.liver import LiverLandmarksWidget
    from napari_surgseg.widgets.sam2_track import RANDOM_TINY, Sam2TrackWidget

    viewer = make_napari_viewer()
    liver = LiverLandmarksWidget(viewer)
    spec = liver.spec
    assert liver.class_names == spec.class_names
    assert _shown(liver.class_combo) == [spec.class_names[c] for c in sorted(spec.class_names)]
    assert liver.class_colours[1] == (1.0, 1.0, 0.0, 1.0)  # spec: silhouette (255, 255, 0)
    # the weights pickers list their own method's weights (liver: only present files)
    assert _shown(liver.weights_combo) == ["(file below)", "liver-a"]
    sam2 = Sam2TrackWidget(viewer)
    labels = _shown(sam2.model_combo)
    assert "sam2-ft (fine-tuned)" in labels and labels[-1] == RANDOM_TINY
    assert not any(name in " ".join(labels) for name in ("rp-ft", "liver-a", "f2-ft"))
    # one device list: the core's
    from surgseg_core.device import available_devices

    assert list(sam2.device_combo.choices) == available_devices() == list(liver.device_combo.choices)


@pytestmark_gui
def test_run_control_cancel_and_model_cache(make_napari_viewer, qtbot):
    from magicgui.widgets import Container, PushButton

    from napari_surgseg.widgets.base import ModelCache, RunControl

    built = []
    cache = ModelCache()
    assert cache.get("a", lambda: built.append("a") or "model a") == "model a"
    assert cache.get("a", lambda: built.append("a") or "other") == "model a"  # kept
    assert cache.get("b", lambda: built.append("b") or "model b") == "model b"
    assert "b" in cache and "a" not in cache and built == ["a", "b"]  # one model at a time

    make_napari_viewer()
    owner = Container()
    run, cancel = PushButton(text="Run"), PushButton(text="Cancel")
    owner.extend([run, cancel])
    ended, errors, done = [], [], []
    control = RunControl(owner, [run], cancel, after=lambda: ended.append(True))
    started = threading.Event()

    def job(n, *, progress=None, cancel=None):
        for i in range(n):
            progress(i, n, "")
            started.set()
            time.sleep(0.02)
            cancel.raise_if_cancelled()
        return n

    control.start(job, 10_000, description="base test", on_done=done.append, on_error=errors.append)
    assert control.busy and not run.enabled and cancel.enabled
    qtbot.waitUntil(started.is_set, timeout=30_000)
    cancel.changed.emit(True)  # the Cancel button
    qtbot.waitUntil(lambda: bool(ended), timeout=30_000)
    assert not control.busy and run.enabled and not cancel.enabled
    assert len(errors) == 1 and isinstance(errors[0], Cancelled) and not done
    # a run that ends normally
    control.start(job, 3, description="base test", on_done=done.append)
    qtbot.waitUntil(lambda: len(ended) == 2, timeout=30_000)
    assert done == [3] and run.enabled


@pytestmark_gui
@pytest.mark.parametrize("module, cls", [("sam2_track", "Sam2TrackWidget"), ("anatomy", "AnatomyWidget"),
                                         ("rpsam2_clicks", "RPSam2ClicksWidget")])
def test_tracking_widgets_never_take_an_existing_points_layer_as_prompts(make_napari_viewer, module, cls):
    """A sample's ground-truth Points layer is never prompts unasked: the
    Prompts picker of every tracking widget starts at "(none)", Track refuses
    with "no prompts" and no masks layer; a new prompt layer becomes the choice."""
    import importlib

    widget_cls = getattr(importlib.import_module(f"napari_surgseg.widgets.{module}"), cls)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32, 3), np.uint8), rgb=True, name="clip")
    truth = viewer.add_points(np.array([[0, 10, 10], [1, 12, 12]], float), name="ground truth landmarks",
                              features={"obj_id": [1, 1], "positive": [True, True]})
    widget = widget_cls(viewer)
    assert _shown(widget.prompts_combo)[0] == "(none)" and widget.prompts_combo.value is None
    assert truth in list(widget.prompts_combo.choices)  # offered, not chosen
    errors = []
    widget.error = errors.append
    widget.track()
    assert errors and ("no clicks" in errors[-1] or "no prompts" in errors[-1])
    assert not any(layer.__class__.__name__ == "Labels" for layer in viewer.layers)
    prompts = widget.new_prompt_layer()
    assert widget.prompts_combo.value is prompts and prompts is not truth
