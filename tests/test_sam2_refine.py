"""Corrections that propagate: a corrected frame's masks become SAM2 mask
prompts and tracking continues from it into the same label stack
(``surgseg_core.sam2_engine.refine.repropagate``), checked frames are kept and
used as prompts, and a whole run can be undone.

Random-init surgseg_tiny models with the object-present bias (as in
test_sam2_track.py): masks are meaningless but non-trivial, and every
comparison is against the engine driven directly with the same prompts.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from surgseg_core.errors import Cancelled, ConfigError
from surgseg_core.progress import CancelToken
from surgseg_core.sam2_engine import StreamingSAM2, build_model
from surgseg_core.sam2_engine.build import TINY_CONFIG
from surgseg_core.sam2_engine.refine import (
    FrameUndo, StackWriter, frames_of, mark_validated, repropagate, spans_of,
)
from surgseg_core.sam2_engine.track import track_video

T, H, W = 7, 64, 80


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(7, n_frames=T, height=H, width=W)
    return np.stack([clip.frame(i).image for i in range(T)])


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    net = build_model(TINY_CONFIG, seed=0)
    with torch.no_grad():  # the random decoder says "object present"
        net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return net


@pytest.fixture
def tracked(frames, model):
    """A stack tracked from clicks on frame 0 (objects 1 and 2)."""
    labels = np.zeros((T, H, W), np.uint8)
    prompts = [{"frame": 0, "obj_id": 1, "points": [[20, 30]], "labels": [1]},
               {"frame": 0, "obj_id": 2, "points": [[60, 40]], "labels": [1]}]
    track_video(frames, prompts, model=model, direction="forward", sink=StackWriter(labels))
    assert set(np.unique(labels)) == {0, 1, 2}
    return labels


def _edit(labels, t):
    """A brush correction on frame t: object 1 becomes a rectangle, object 2 stays."""
    labels[t][labels[t] == 1] = 0
    labels[t, 8:30, 10:45] = 1


def _reference(frames, model, prompt_frames, labels, ids, direction, frame_range, start):
    engine = StreamingSAM2(model, frames)
    for t in prompt_frames:
        for obj in ids:
            engine.add_mask(t, obj, labels[t] == obj)
    out = {}
    engine.propagate(lambda r: out.__setitem__(r.frame_idx, r.label_map()), direction=direction,
                     start=start, frame_range=frame_range)
    return out


def test_engine_uses_a_mask_prompt(frames, model):
    """add_mask at frame k: frame k's output is that mask (SAM2 uses a mask
    input as the output) and later frames follow it: another mask gives
    other masks downstream."""
    a = np.zeros((H, W), bool)
    a[10:40, 10:50] = True
    b = np.zeros((H, W), bool)
    b[30:60, 40:78] = True
    outs = []
    for mask in (a, b):
        engine = StreamingSAM2(model, frames)
        engine.add_mask(2, 1, mask)
        got = {}
        engine.propagate(lambda r: got.__setitem__(r.frame_idx, r.object_mask(1).astype(bool)), start=2)
        assert sorted(got) == list(range(2, T))
        inter, union = (got[2] & mask).sum(), (got[2] | mask).sum()
        assert inter / union > 0.9, "the prompted frame's output is not the mask prompt"
        outs.append(got)
    assert any(outs[0][t].any() for t in range(3, T))
    assert any(not np.array_equal(outs[0][t], outs[1][t]) for t in range(3, T)), "later frames ignore the mask"


def test_repropagate_forward_changes_only_later_frames_and_undo_restores(frames, model, tracked):
    k, v = 2, 4
    labels = tracked
    _edit(labels, k)
    before = labels.copy()
    undo = FrameUndo()
    summary = repropagate(frames, labels, k, direction="forward", validated=[[v, v]], model=model, undo=undo)
    assert summary["obj_ids"] == [1, 2] and summary["prompt_frames"] == [k, v]
    assert summary["frame_range"] == [k, T - 1] and summary["frames_protected"] == [v]
    np.testing.assert_array_equal(labels[: k + 1], before[: k + 1])  # the other side and the corrected frame
    np.testing.assert_array_equal(labels[v], before[v])  # the validated frame
    changed = summary["frames_changed"]
    assert changed and all(t > k and t != v for t in changed)
    assert undo.frames == changed
    # what was written is the engine's output from mask prompts on k and v
    ref = _reference(frames, model, [k, v], before, [1, 2], "forward", (k, T - 1), k)
    for t in range(k + 1, T):
        if t != v:
            np.testing.assert_array_equal(labels[t], ref[t])
    assert summary["random_weights"] is True and summary["provenance"]["repropagation"]["status"] == "completed"
    # undo: the stack exactly as before the run
    assert undo.restore(labels) == changed
    np.testing.assert_array_equal(labels, before)


def test_repropagate_backward_leaves_later_frames(frames, model, tracked):
    k = 4
    labels = tracked
    _edit(labels, k)
    before = labels.copy()
    summary = repropagate(frames, labels, k, direction="backward", model=model)
    np.testing.assert_array_equal(labels[k:], before[k:])
    assert summary["frames_changed"] and max(summary["frames_changed"]) < k
    ref = _reference(frames, model, [k], before, [1, 2], "backward", (0, k), k)
    for t in range(k):
        np.testing.assert_array_equal(labels[t], ref[t])


def test_untracked_objects_keep_their_pixels_and_erased_objects_are_absent(frames, model, tracked):
    k = 2
    labels = tracked
    labels[k][labels[k] == 2] = 0  # the user erased object 2 on frame k
    before = labels.copy()
    # only object 1 tracked: object 2's pixels stay where object 1 does not cover them
    repropagate(frames, labels, k, direction="forward", model=model)
    for t in range(k + 1, T):
        was2 = before[t] == 2
        assert np.all(np.isin(labels[t][was2], (1, 2)))
        assert np.all(labels[t][was2 & (labels[t] != 1)] == 2)
    # object 2 named: an empty mask prompt on frame k says "absent" -> removed downstream
    labels[:] = before
    summary = repropagate(frames, labels, k, direction="forward", obj_ids=[1, 2], model=model)
    assert summary["obj_ids"] == [1, 2]
    ref = _reference(frames, model, [k], before, [1, 2], "forward", (k, T - 1), k)
    for t in range(k + 1, T):
        np.testing.assert_array_equal(labels[t], ref[t])


def test_cancel_leaves_whole_frames_and_undo_restores(frames, model, tracked):
    k = 1
    labels = tracked
    _edit(labels, k)
    before = labels.copy()
    ref = _reference(frames, model, [k], before, [1, 2], "forward", (k, T - 1), k)
    token = CancelToken()
    undo = FrameUndo()

    def progress(done, total, message=""):
        if total and done >= 3:
            token.cancel()

    with pytest.raises(Cancelled):
        repropagate(frames, labels, k, direction="forward", model=model, undo=undo, progress=progress, cancel=token)
    written = [t for t in range(T) if not np.array_equal(labels[t], before[t])]
    assert written and max(written) < T - 1, "cancel came too late to test"
    for t in range(T):  # every frame is either as before or the complete new map
        assert np.array_equal(labels[t], before[t]) or np.array_equal(labels[t], ref[t])
    undo.restore(labels)
    np.testing.assert_array_equal(labels, before)


def test_repropagate_refuses_bad_input(frames, model, tracked):
    with pytest.raises(ConfigError, match="no masks to propagate"):
        repropagate(frames, np.zeros((T, H, W), np.uint8), 1, model=model)
    with pytest.raises(ConfigError, match="one map per video frame"):
        repropagate(frames, np.zeros((T - 1, H, W), np.uint8), 1, model=model)
    with pytest.raises(ConfigError, match="width x height"):
        repropagate(frames, np.ones((T, H, W - 1), np.uint8), 1, model=model)
    with pytest.raises(ConfigError, match="outside the video"):
        repropagate(frames, tracked, T, model=model)
    with pytest.raises(ConfigError, match="direction"):
        repropagate(frames, tracked, 1, direction="sideways", model=model)


def test_undo_spills_to_disk_and_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 3, (5, 32, 40)).astype(np.uint8)
    original = stack.copy()
    undo = FrameUndo(max_ram_mb=0.0005, folder=tmp_path)  # one frame in RAM (~400 B), the rest on disk
    for t in (1, 3, 4):
        undo.record(t, stack[t])
        stack[t] = 0
    undo.record(3, stack[3])  # a later state of a recorded frame does not replace the old one
    assert undo.frames == [1, 3, 4] and undo.disk_frames == [3, 4]
    assert undo.restore(stack) == [1, 3, 4]
    np.testing.assert_array_equal(stack, original)
    undo.discard()
    assert not any(tmp_path.iterdir())


def test_validated_spans():
    spans = mark_validated([], 3, 5)
    assert spans == [[3, 5]]
    spans = mark_validated(spans, 6)
    assert spans == [[3, 6]]
    spans = mark_validated(spans, 10, 8)
    assert spans == [[3, 6], [8, 10]]
    spans = mark_validated(spans, 4, checked=False)
    assert spans == [[3, 3], [5, 6], [8, 10]]
    assert frames_of(spans) == {3, 5, 6, 8, 9, 10} and frames_of([7]) == {7}
    assert spans_of([2, 1, 5]) == [[1, 2], [5, 5]]
    with pytest.raises(ConfigError):
        mark_validated([], -1)


# ------------------------------------------------------------------ widget
@pytest.fixture
def widget_and_video(make_napari_viewer, frames, monkeypatch, tmp_path):
    from surgseg_core.sam2_engine import build as build_module
    from napari_surgseg.widgets.sam2_track import Sam2TrackWidget

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    real = build_module.build_model

    def biased(*args, **kwargs):
        net = real(*args, **kwargs)
        with torch.no_grad():
            net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
        return net

    monkeypatch.setattr(build_module, "build_model", biased)
    viewer = make_napari_viewer()
    video = viewer.add_image(frames, rgb=True, name="clip")
    widget = Sam2TrackWidget(viewer)
    widget.model_combo.value = (TINY_CONFIG, None)
    return viewer, widget, video


def _wait_done(qtbot, widget, timeout=120000):
    qtbot.waitUntil(lambda: widget.track_button.enabled, timeout=timeout)


def _track(widget, qtbot):
    layer = widget.prompts_combo.value or widget.new_prompt_layer()
    if not len(layer.data):
        widget.obj_spin.value = 1
        layer.add([[0, 30, 20]])
        widget.obj_spin.value = 2
        layer.add([[0, 40, 60]])
    widget.direction_combo.value = "forward"
    widget.track()
    _wait_done(qtbot, widget)
    return widget.result_layer


def test_widget_result_layer_is_lazy_and_reused(widget_and_video, qtbot):
    """The result layer is a sparse on-disk stack (creating it writes no
    frame), and tracking the same video again reuses it."""
    import os

    from napari.layers import Labels

    viewer, widget, video = widget_and_video
    big = widget._new_labels(video, (250, 720, 1280), "big SAM2 masks", "running", [])
    qtbot.wait(50)  # let napari slice and draw it
    assert isinstance(big.data, np.memmap)
    on_disk = os.stat(big.data.filename).st_blocks * 512
    assert on_disk < big.data.nbytes / 100, f"creating the layer wrote {on_disk} bytes: not sparse"
    viewer.layers.remove(big)

    labels = _track(widget, qtbot)
    assert isinstance(labels.data, np.memmap) and set(np.unique(labels.data)) == {0, 1, 2}
    assert labels.metadata["sam2_tracking"]["video"] == "clip"
    widget.result_combo.value = None  # "(new layer)": still the video's existing result layer
    again = _track(widget, qtbot)
    assert again is labels
    assert sum(isinstance(lay, Labels) for lay in viewer.layers) == 1


def test_widget_repropagate_checked_frames_and_undo(widget_and_video, qtbot, frames, model):
    from surgseg_core.sam2_engine.refine import VALIDATED_KEY

    viewer, widget, video = widget_and_video
    labels = _track(widget, qtbot)
    assert widget.result_combo.value is labels and labels.metadata["sam2_tracking"]["obj_ids"] == [1, 2]
    k, v = 2, 4
    # the user checks frame 4, then frames 4..5 via First..Last, then unchecks 5
    viewer.dims.set_current_step(0, v)
    assert widget.mark_checked() == [[v, v]]
    widget.start_spin.value, widget.end_spin.value = 5, 5
    assert widget.mark_checked(span=True) == [[v, 5]]
    viewer.dims.set_current_step(0, 5)
    assert widget.mark_checked(checked=False) == [[v, v]]
    assert labels.metadata[VALIDATED_KEY] == [[v, v]] and "1 checked" in widget.checked_label.value
    # checked frames are saved with the layer's autosave although no pixel changed
    from napari_surgseg._autosave import watcher_of
    from surgseg_core.io.autosave import list_snapshots

    folder = watcher_of(labels).folder
    qtbot.waitUntil(lambda: any((e.get("metadata") or {}).get(VALIDATED_KEY) == [[v, v]]
                                for e in list_snapshots(folder) if e["name"] == labels.name), timeout=30000)
    widget.start_spin.value, widget.end_spin.value = 0, -1
    # a brush correction on frame k, then re-propagate forward from it
    data = labels.data
    data[k][data[k] == 1] = 0
    data[k, 8:30, 10:45] = 1
    labels.refresh()
    before = np.array(data)
    viewer.dims.set_current_step(0, k)
    widget.direction_combo.value = "forward"
    widget.repropagate()
    assert not widget.track_button.enabled and not widget.undo_button.enabled
    _wait_done(qtbot, widget)
    summary = widget.last_summary
    assert summary["frame"] == k and summary["prompt_frames"] == [k, v] and summary["frames_protected"] == [v]
    after = np.array(labels.data)
    np.testing.assert_array_equal(after[: k + 1], before[: k + 1])  # earlier frames and the corrected one
    np.testing.assert_array_equal(after[v], before[v])  # the checked frame
    changed = summary["frames_changed"]
    assert changed and all(t > k and t != v for t in changed)
    ref = _reference(frames, model, [k, v], before, [1, 2], "forward", (k, T - 1), k)
    for t in range(k + 1, T):
        if t != v:
            np.testing.assert_array_equal(after[t], ref[t])
    assert "re-propagated" in widget.status.value
    assert sum(type(lay).__name__ == "Labels" for lay in viewer.layers) == 1
    # one click undoes the whole run, exactly; the Track run before it is next
    assert widget.undo_button.enabled
    assert widget.undo_last_run() == changed
    np.testing.assert_array_equal(np.array(labels.data), before)
    assert widget.undo_button.enabled
    widget.undo_last_run()
    assert not np.array(labels.data).any() and not widget.undo_button.enabled


def test_widget_repropagate_cancel_leaves_whole_frames(widget_and_video, qtbot, frames, model, monkeypatch):
    from _engine_helpers import cancel_mid_run, slow_engine_steps

    viewer, widget, video = widget_and_video
    labels = _track(widget, qtbot)
    k = 1
    labels.data[k, 8:30, 10:45] = 1
    before = np.array(labels.data)
    ref = _reference(frames, model, [k], before, [1, 2], "forward", (k, T - 1), k)
    viewer.dims.set_current_step(0, k)
    cancel_mid_run(qtbot, widget, widget.repropagate, slow_engine_steps(monkeypatch), frames=2)
    assert labels.metadata["sam2_tracking"]["status"] == "cancelled" and widget.last_summary is None
    after = np.array(labels.data)
    assert any(not np.array_equal(after[t], before[t]) for t in range(T)), "cancel came too early to test"
    assert np.array_equal(after[T - 1], before[T - 1]), "cancel came too late to test"
    for t in range(T):  # every frame is either as before or complete
        assert np.array_equal(after[t], before[t]) or np.array_equal(after[t], ref[t])
    widget.undo_last_run()
    np.testing.assert_array_equal(np.array(labels.data), before)


# ------------------------------------------------------------------ CLI
def test_cli_repropagate_updates_the_png_folder(frames, tmp_path, monkeypatch, capsys):
    """surgseg track -> correct one PNG by hand -> surgseg repropagate: later
    frames change, earlier frames, the corrected and the validated frame do not."""
    import json

    import tifffile
    from PIL import Image

    from surgseg_core.cli.main import main
    from surgseg_core.sam2_engine import build as build_module

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    real = build_module.build_model

    def biased(*args, **kwargs):
        net = real(*args, **kwargs)
        with torch.no_grad():
            net.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
        return net

    monkeypatch.setattr(build_module, "build_model", biased)
    video = tmp_path / "clip.tif"
    tifffile.imwrite(video, frames, photometric="rgb")
    out = tmp_path / "masks"
    assert main(["track", str(video), "--box", "0", "10", "8", "50", "40", "--out", str(out),
                 "--direction", "forward"]) == 0
    k, v = 2, 4
    corrected = np.zeros((H, W), np.uint8)
    corrected[20:50, 30:70] = 1
    Image.fromarray(corrected).save(out / f"{k:06d}.png")
    before = {t: np.array(Image.open(out / f"{t:06d}.png")) for t in range(T)}
    capsys.readouterr()
    assert main(["repropagate", str(video), str(out), "--frame", str(k), "--validated", str(v), str(v),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["obj_ids"] == [1] and summary["prompt_frames"] == [k, v]
    after = {t: np.array(Image.open(out / f"{t:06d}.png")) for t in range(T)}
    for t in list(range(k + 1)) + [v]:
        np.testing.assert_array_equal(after[t], before[t])
    assert summary["frames_changed"] and all(t > k and t != v for t in summary["frames_changed"])
    for t in summary["frames_changed"]:
        assert not np.array_equal(after[t], before[t])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["repropagations"][0]["repropagation"]["frame"] == k and "tracking" in prov
    capsys.readouterr()
    assert main(["repropagate", str(video), str(out), "--frame", str(T)]) == 1
    assert "outside the video" in capsys.readouterr().err
    assert main(["repropagate", str(video), str(tmp_path / "nope"), "--frame", "1"]) == 1
    assert "label folder not found" in capsys.readouterr().err
