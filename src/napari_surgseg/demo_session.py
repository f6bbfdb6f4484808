"""``surgseg demo --napari`` (``python -m napari_surgseg.demo_session``):
napari with the bundled sample clip, every method widget docked from the
Plugins menu's entries, the bundled demonstration weights chosen and
prompts placed, ready to press Track / Run:

* Track with SAM2: a box around each instrument on frame 0;
* Anatomy (F2PASeg): a box per visible anatomy class on frames 0, 10, 20;
* Clicks (RP-SAM2): a click beside each instrument on frame 0 (it segments
  at once; "Track through video" follows them);
* Tool landmarks: the demo networks (press Run);
* Liver landmarks: the liver sample (hidden under the clip), the liver model
  the command-line demo registered when it ran (``surgseg demo``), else
  none chosen.

Prompts come from the generator's ground truth, as a user would draw them.
``--check`` sets everything up, prints what it did and closes (the test);
``--screenshots DIR`` presses every Track / Run in turn and saves a window
screenshot per widget (the README's pictures in ``docs/``), with a fresh
autosave folder (no "Restore?" notice from earlier local sessions).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

import numpy as np

PLUGIN = "napari-surgseg"
WIDGETS = ("Track with SAM2", "Anatomy (F2PASeg)", "Clicks (RP-SAM2)", "Tool landmarks", "Liver landmarks")
DEMO_SAM2 = "surgseg-demo-sam2"
DEMO_LIVER = "surgseg-demo-liver"


def _video_of(layers) -> Any:
    from napari.layers import Image

    return next(layer for layer in layers if isinstance(layer, Image))


def _choose(combo, text: str) -> bool:
    """Pick the combo entry whose label contains ``text`` (False: none)."""
    box = combo.native
    for i in range(box.count()):
        if text in box.itemText(i):
            box.setCurrentIndex(i)
            return True
    return False


def _boxes(mask: np.ndarray, ids) -> Dict[int, tuple]:
    out = {}
    for k in ids:
        ys, xs = np.nonzero(mask == k)
        if len(xs):
            out[int(k)] = (float(ys.min()), float(xs.min()), float(ys.max()), float(xs.max()))
    return out


def _rectangle(t: int, box: tuple) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.array([[t, y0, x0], [t, y0, x1], [t, y1, x1], [t, y1, x0]], float)


def set_up(viewer) -> Dict[str, Any]:
    """Open the samples, dock and prepare every widget; returns what was done."""
    from surgseg_core.io.export import read_png_masks
    from surgseg_core.synth.sample import CLIP_DIR, sample_folder

    done: Dict[str, Any] = {}
    liver_layers = viewer.open_sample(PLUGIN, "synthetic_liver")
    for layer in liver_layers:
        layer.visible = False
    clip_layers = viewer.open_sample(PLUGIN, "synthetic_clip")
    video = _video_of(clip_layers)
    for layer in clip_layers:  # ground truth stays in the layer list, out of the way
        if layer is not video:
            layer.visible = False
    viewer.layers.selection.active = video
    viewer.dims.set_current_step(0, 0)
    folder = sample_folder(CLIP_DIR)
    instruments, anatomy = read_png_masks(folder / "instruments"), read_png_masks(folder / "anatomy")
    tools_in_view = _boxes(np.asarray(instruments[0]), np.unique(instruments[0])[1:])
    widgets = {}
    for title in WIDGETS:
        _, widgets[title] = viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=True)

    track = widgets["Track with SAM2"]
    track.video_combo.value = video
    done["track_model"] = _choose(track.model_combo, DEMO_SAM2)
    boxes = track.new_box_layer()
    for obj, box in tools_in_view.items():
        track.obj_spin.value = obj
        boxes.add(_rectangle(0, box), shape_type="rectangle")
    done["track_boxes"] = len(boxes.data)

    anatomy_w = widgets["Anatomy (F2PASeg)"]
    done["anatomy_boxes"] = place_anatomy_boxes(anatomy_w, video, anatomy)

    clicks = widgets["Clicks (RP-SAM2)"]
    clicks.video_combo.value = video
    done["clicks_weights"] = clicks.weights_combo.value
    points = clicks.new_prompt_layer()
    margin = 6.0
    for k, obj in enumerate(tools_in_view):
        if k:
            clicks.new_object()
        y0, x0, y1, x1 = tools_in_view[obj]
        mask = np.asarray(instruments[0]) == obj
        ys, xs = np.nonzero(mask)
        i = int(np.argmin(xs)) if k % 2 == 0 else int(np.argmax(xs))  # near an end of the shaft, just off it
        points.add([0, float(ys[i]), float(np.clip(xs[i] - margin if k % 2 == 0 else xs[i] + margin, 0,
                                                    mask.shape[1] - 1))])
    done["clicks"] = len(points.data)

    tools = widgets["Tool landmarks"]
    tools.video_combo.value = video
    tools.mode_combo.value = "frame range"
    tools.frames.set(0, 23)
    done["tools_weights"] = tools.weights_combo.value

    liver = widgets["Liver landmarks"]
    liver.image_combo.value = _video_of(liver_layers)
    done["liver_weights"] = _choose(liver.weights_combo, DEMO_LIVER)
    widgets["Track with SAM2"].native.parent().raise_()  # the first tab in front
    done["widgets"] = sorted(widgets)
    done["_widgets"] = widgets
    done["_videos"] = {"clip": video, "liver": _video_of(liver_layers),
                       "samples": {id(layer) for layer in (*liver_layers, *clip_layers)}}
    return done


def place_anatomy_boxes(widget, video, anatomy) -> int:
    """A box per visible anatomy class on frames 0, 10 and 20 (class ids from the spec)."""
    widget.video_combo.value = video
    layer = widget.new_box_layer()
    n = 0
    for t in range(0, min(len(anatomy), 21), 10):
        for cls, box in _boxes(np.asarray(anatomy[t]), widget.class_set().ids).items():
            widget.class_combo.value = cls
            layer.add(_rectangle(t, box), shape_type="rectangle")
            n += 1
    return n


def _runs(widgets: Dict[str, Any]) -> list:
    """(title, start) per widget: what pressing its Track / Run button does."""
    def track_clicks():
        w = widgets["Clicks (RP-SAM2)"]
        return w.track() if w.result_layer is not None else None

    return [("Track with SAM2", lambda: widgets["Track with SAM2"].track()),
            ("Anatomy (F2PASeg)", lambda: widgets["Anatomy (F2PASeg)"].track()),
            ("Clicks (RP-SAM2)", track_clicks),
            ("Tool landmarks", lambda: widgets["Tool landmarks"].run()),
            ("Liver landmarks", lambda: widgets["Liver landmarks"].run())]


def _widget_layers(widget) -> set:
    """Ids of the layers a widget works with: those its pickers (``*_combo``)
    hold and those it made for its results (``*_layer`` attributes)."""
    from napari.layers import Layer

    ids = set()
    for name, value in vars(widget).items():
        if name.endswith("_combo"):
            value = getattr(value, "value", None)
        elif not name.endswith("_layer"):
            continue
        if isinstance(value, Layer):
            ids.add(id(value))
    return ids


def screenshots(viewer, out_dir, videos: Dict[str, Any], widgets: Dict[str, Any], frame: int = 12):
    """Generator for the Qt loop: press every widget's Track / Run in turn,
    wait for it, then save a window screenshot with that widget in front
    (``docs/``: what the README shows)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made: Dict[str, set] = {}  # ids of the layers each run made (its results)
    # the set-up's click previews first: their layers must not count as another run's results
    yield lambda: not any(x.runs.busy for x in widgets.values() if getattr(x, "runs", None) is not None)
    for title, start in _runs(widgets):
        w = widgets[title]
        liver = "Liver" in title
        if liver and w.weights_combo.value is None and not w.checkpoint_edit.value:
            print(f"screenshot {title}: skipped (no liver model registered: run `surgseg demo` first)", flush=True)
            continue
        yield lambda w=w: not w.runs.busy  # a previous click may still be segmenting
        before = {id(layer) for layer in viewer.layers}
        viewer.dims.set_current_step(0, 0)  # where the prompts are
        print(f"running {title}", flush=True)
        start()
        yield lambda w=w: not w.runs.busy
        print(f"{title}: {w.status.value}", flush=True)
        made[title] = {id(layer) for layer in viewer.layers if id(layer) not in before}
        own = made[title] | _widget_layers(w)
        for layer in viewer.layers:  # the video in view, this widget's prompts and results
            layer.visible = layer is videos["liver" if liver else "clip"] or id(layer) in own
        viewer.dims.set_current_step(0, 0 if liver else frame)
        viewer.reset_view()
        w.native.parent().raise_()  # its tab in front
        target = out / f"widget_{title.split(' (')[0].lower().replace(' ', '_')}.png"
        yield lambda: True
        viewer.window.screenshot(str(target), canvas_only=False, flash=False)
        print(f"screenshot {target}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    import napari
    from qtpy.QtCore import QTimer

    argv = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in argv
    shots = argv[argv.index("--screenshots") + 1] if "--screenshots" in argv else None
    if shots:
        # pictures of a first session: layers autosaved by earlier local sessions on the sample video
        # would add a "Restore?" notice to every screenshot
        import os
        import tempfile

        from surgseg_core.io.autosave import ENV_DIR

        os.environ[ENV_DIR] = tempfile.mkdtemp(prefix="surgseg-screenshots-autosave-")
    viewer = napari.Viewer(title="surgseg demo: press Track / Run in each widget")
    if shots:
        viewer.window._qt_window.resize(1900, 1000)

    def pump(gen) -> None:
        """Advance ``gen`` whenever the condition it yielded holds (the Qt loop keeps running)."""
        state = {"cond": lambda: True}

        def tick() -> None:
            try:
                if state["cond"]():
                    state["cond"] = next(gen)
                QTimer.singleShot(200, tick)
            except StopIteration:
                viewer.close()
            except Exception:  # a broken step must not leave a silent, idle viewer behind
                import traceback

                traceback.print_exc()
                viewer.close()

        tick()

    def go() -> None:
        done = set_up(viewer)
        videos, docked = done.pop("_videos"), done.pop("_widgets")
        print("demo session ready: " + ", ".join(f"{k}={v}" for k, v in done.items()), flush=True)
        if shots:
            pump(screenshots(viewer, shots, videos, docked))
        elif check:
            QTimer.singleShot(3000, viewer.close)  # let the first click's worker finish

    QTimer.singleShot(0, go)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
