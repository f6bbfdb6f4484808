"""Autosave of a long corrected label stack: what one correction costs.

A tracked video's masks are a (T, H, W) label stack (memory-mapped on disk
when large, as the widgets make them). Each correction is autosaved. The
baseline is what every save cost before frame-wise snapshots: the whole
stack read, hashed and compressed into a new TIFF (the first save still
does this). Then, against the same snapshot:

- a brush stroke on one frame (napari's paint event names the frame): only
  that frame is read and compressed, the other frames' compressed strips are
  copied from the last snapshot;
- a model run or an undo changed frames the autosave cannot name: every
  frame is read and hashed, only the changed ones are compressed.

Run:        python benchmarks/autosave.py            (600 frames of 720p)
Short run:  python benchmarks/autosave.py --frames 100
Writes its table into BENCHMARKS.md between <!-- bench:autosave --> markers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script


def masks(stack, seed: int = 0) -> None:
    """Fill each frame with a few moving elliptic objects (what tracking writes)."""
    import numpy as np

    t_n, h, w = stack.shape
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, size=(3, 2)) * (h, w)
    for t in range(t_n):
        frame = np.zeros((h, w), stack.dtype)
        for k, (cy, cx) in enumerate(centres, start=1):
            cy2, cx2 = cy + 40 * np.sin(t / 20 + k), cx + 60 * np.cos(t / 25 + k)
            frame[((yy - cy2) / (h / 8)) ** 2 + ((xx - cx2) / (w / 10)) ** 2 <= 1] = k
        stack[t] = frame


def main() -> None:
    import numpy as np

    from surgseg_core.io import autosave as core
    from surgseg_core.io.label_stack import new_label_stack

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="surgseg-bench-autosave-") as tmp:
        stack = new_label_stack((args.frames, args.height, args.width), np.uint8, folder=tmp, max_ram_mb=0)
        masks(stack)
        stack.flush()
        folder = Path(tmp) / "autosave"
        times = {"full": [], "stroke": [], "unknown": []}
        for rep in range(args.reps):
            t0 = time.perf_counter()  # the baseline: a whole-stack save (as every save was)
            core.save_layer_snapshot(folder / f"full{rep}", "masks", "labels", stack)
            times["full"].append(time.perf_counter() - t0)
        for rep in range(args.reps):
            t = (rep * 37) % args.frames
            stack[t, 100:140, 200:260] = 5  # a brush stroke on frame t
            t0 = time.perf_counter()
            core.save_layer_snapshot(folder / "full0", "masks", "labels", stack, changed_frames=[t],
                                     skip_unchanged=False)
            times["stroke"].append(time.perf_counter() - t0)
            stack[(t + 5) % args.frames, 300:320, 300:340] = 2  # a model writes a frame: frames unknown
            t0 = time.perf_counter()
            core.save_layer_snapshot(folder / "full0", "masks", "labels", stack)
            times["unknown"].append(time.perf_counter() - t0)
        entry = core.list_snapshots(folder / "full0")[0]
        ok = bool(np.array_equal(core.load_snapshot(entry)[0][:: max(1, args.frames // 50)],
                                 stack[:: max(1, args.frames // 50)]))
        del stack
    med = {k: statistics.median(v) for k, v in times.items()}
    mb = args.frames * args.height * args.width / 1e6
    text = "\n".join([
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, local disk; {load_note(load0, os.getloadavg()[0])}. "
        f"Label stack {args.frames} x {args.height} x {args.width} uint8 ({mb:.0f} MB, memory-mapped, 3 moving "
        f"objects per frame); medians of {args.reps}. Run: `python benchmarks/autosave.py --frames {args.frames}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}).",
        "",
        "| save | seconds | vs whole-stack save |",
        "|---|---:|---:|",
        f"| whole stack (baseline: every save before; now the first) | {med['full']:.2f} | 1.00x |",
        f"| after a brush stroke on one frame | {med['stroke']:.3f} | {med['stroke'] / med['full']:.3f}x |",
        f"| after a model run or undo (frames unknown: all read and hashed) | {med['unknown']:.2f} | "
        f"{med['unknown'] / med['full']:.2f}x |",
        "",
        f"Snapshot after the incremental saves equals the stack: {ok}. Goal (one stroke's save <= 0.1x the "
        f"whole-stack save): {'met' if med['stroke'] <= 0.1 * med['full'] else 'NOT met'}.",
    ])
    print(text)
    if not args.no_write:
        write_section("autosave", "## Autosave of a corrected label stack (`benchmarks/autosave.py`)\n\n" + text)


if __name__ == "__main__":
    main()
