"""Benchmark: playing and scrubbing a 720p video in napari, our lazy reader vs
the same frames preloaded in memory.

napari runs under Xvfb (software OpenGL), the way the tests run it; the
script re-runs itself under ``xvfb-run`` when no display is set. The clip is
the real 720p laparoscopy clip in ../shared/realdata when present, else a
generated 1280x720 H.264 clip. Three layers of the same frames, one at a
time: our ``FrameSource`` as the napari reader opens it (reading ahead in
the direction of play), the same without read-ahead, and a numpy array
loaded beforehand (the baseline: napari's own cost of a step).

Per step: "ours" = time inside the layer data's ``__getitem__`` (decode,
cache, conversion), "step" = setting the time slider + drawing the canvas
(``processEvents`` until the repaint is done). Modes: playing forward at
the video's frame rate (paced: one step per frame interval, as napari's play
button does), stepping forward as fast as possible, stepping backward, and
random scrubbing. Goal (issue 16): ours <= 10 ms per step while playing.

Run:  python benchmarks/playback.py [--frames 150] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SURGSEG_REALDATA", REPO.parent / "shared" / "realdata"))
REAL_CLIP = REALDATA / "lapchole_clip_rvimlab" / "endo.mp4"
GOAL_MS = 10.0


def _clip(folder: Path, n: int) -> tuple:
    if REAL_CLIP.is_file():
        return REAL_CLIP, "real laparoscopy clip (lapchole_clip_rvimlab/endo.mp4, 720p H.264)"
    import imageio_ffmpeg

    path = folder / "gen720.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=25", "-frames:v", str(n), "-c:v", "libx264", "-bf", "2",
                    "-g", "50", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path, "generated 1280x720 H.264 (testsrc2, GOP 50)"


class _Timed:
    """Array-like wrapper timing ``__getitem__`` (what napari asks of the data)."""

    def __init__(self, data) -> None:
        self.data, self.seconds = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        t0 = time.perf_counter()
        out = self.data[key]
        self.seconds.append(time.perf_counter() - t0)
        return out

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.data, dtype=dtype)


def _steps(mode: str, n: int) -> list:
    import random

    if mode in ("play", "step"):
        return list(range(1, n))
    if mode == "back":
        return list(range(n - 2, -1, -1))
    rng = random.Random(0)
    return [rng.randrange(n) for _ in range(min(n, 60))]


def _run_mode(viewer, app, layer, timed: _Timed, mode: str, n: int, fps: float) -> dict:
    start = 0 if mode != "back" else n - 1
    viewer.dims.set_current_step(0, start)
    app.processEvents()
    time.sleep(0.5)  # let read-ahead of the start position finish
    ours, steps = [], []
    interval = 1.0 / fps
    next_t = time.perf_counter()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    for t in _steps(mode, n):
        if mode == "play":
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_t = max(next_t + interval, time.perf_counter() - interval)
        timed.seconds.clear()
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, t)
        canvas.update()
        app.processEvents()
        steps.append(time.perf_counter() - t0)
        ours.append(sum(timed.seconds))
    ms = lambda xs, q=0.5: 1000 * sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"ours_ms": ms(ours), "ours_p95_ms": ms(ours, 0.95), "step_ms": ms(steps),
            "step_p95_ms": ms(steps, 0.95), "steps": len(steps)}


def run(args) -> str:
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    from surgseg_core.io import open_video
    from napari_surgseg.widgets.base.layers import PLAYBACK_PREFETCH

    tmp = Path(tempfile.mkdtemp(prefix="bench-play-"))
    try:
        path, label = _clip(tmp, args.frames)
        probe = open_video(path, stop=args.frames)
        n, fps = len(probe), float(probe.metadata.fps or 25.0)
        preloaded = np.stack([probe[i] for i in range(n)])  # the baseline's frames, read once
        probe.close()
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        app = QApplication.instance()
        load_start = os.getloadavg()[0]
        rows = []
        layers = [(f"ours, read-ahead {PLAYBACK_PREFETCH} (as the reader opens it)", lambda: open_video(path, stop=n, prefetch=PLAYBACK_PREFETCH)),
                  ("ours, no read-ahead", lambda: open_video(path, stop=n)),
                  ("preloaded numpy array (baseline)", lambda: preloaded)]
        for name, make in layers:
            results = {}
            for mode in ("play", "step", "back", "scrub"):
                data = make()  # fresh per mode: a cold cache, as when the video was just opened
                timed = _Timed(data)
                layer = viewer.add_image(timed, rgb=True, contrast_limits=(0, 255), name=name)
                app.processEvents()
                results[mode] = _run_mode(viewer, app, layer, timed, mode, n, fps)
                viewer.layers.remove(layer)
                if hasattr(data, "close"):
                    data.close()
                print(f"  {name} / {mode}: {results[mode]}", flush=True)
            rows.append((name, results))
        viewer.close()
        load_end = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import napari as _n

    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, napari {_n.__version__} under Xvfb (Mesa software "
        f"OpenGL). Clip: {label}, first {n} frames at {fps:g} fps. {load_note(load_start, load_end)}. "
        f"Run: `python benchmarks/playback.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| layer data | mode | ours per step, median (p95) ms | whole step incl. drawing, median (p95) ms |",
        "|---|---|---:|---:|",
    ]
    modes = {"play": f"play forward at {fps:g} fps", "step": "step forward, unpaced", "back": "step backward",
             "scrub": "random scrubbing"}
    for name, results in rows:
        for mode, r in results.items():
            lines.append(f"| {name} | {modes[mode]} | {r['ours_ms']:.1f} ({r['ours_p95_ms']:.1f}) | "
                         f"{r['step_ms']:.1f} ({r['step_p95_ms']:.1f}) |")
    ours_play = rows[0][1]["play"]["ours_ms"]
    lines += ["", f"Goal (ours <= {GOAL_MS:g} ms per step while playing, read-ahead as the reader opens videos): "
              f"{ours_play:.1f} ms -> {'met' if ours_play <= GOAL_MS else 'NOT met'}. 'Ours' is the time inside the "
              "layer data's `__getitem__` during the step; the rest of a step is napari slicing and drawing, which "
              "the preloaded array shows alone."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        return subprocess.call(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, __file__]
                               + sys.argv[1:])
    body = run(args)
    print(body)
    if not args.no_write:
        write_section("playback", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
