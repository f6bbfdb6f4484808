"""Benchmark: streaming SAM2 engine vs SAM2VideoPredictor.

Same model (randomly initialised SAM2.1 architecture: no weights can be
downloaded here, and speed/memory do not depend on the weights), same frames
(one JPEG folder: SAM2 loads it with ``init_state``, our engine reads it
lazily through ``surgseg_core.io.open_video``), same prompts (one click per
object on frame 0), forward propagation over 16/32/64/128 frames.

Three runs per clip length, in one invocation: SAM2VideoPredictor (float32
on a CPU: SAM2's own CPU path), our engine forced to float32
(``precision="fp32"``, bit-equal to SAM2) and our engine with its defaults
as a user runs it (``precision="auto"``: on a CPU with native bf16 the
image encoder in bf16). Each case runs in its own subprocess so its peak
RSS (``ru_maxrss``) is clean, ``--rounds`` times (default 2, the order
reversed every other round; medians: this VM's speed drifts by 5-10 %
between minutes). Seconds per frame = median wall time between
two emitted frames after the first 4 (steady state), torch's default
threads unless ``--threads``; CPU seconds are shown beside. Goals: our peak
RSS at the longest clip <= 1.1x our peak at the shortest; ours (default)
<= 0.5x SAM2's s/frame on a CPU (issue 16), <= 1.0x in float32.

CPU (default):  python benchmarks/propagation.py
Reduced run:    python benchmarks/propagation.py --image-size 256 --frames 16 32 64 128
GPU part:       python benchmarks/propagation.py --gpu   (needs CUDA: SAM2.1 tiny and small
                at 1024 px with bf16 autocast, our engine decoding an mp4; FPS)
Writes its table into BENCHMARKS.md between <!-- bench:propagation --> markers
(``--section-suffix`` lets a partial run write a sub-table).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
WARMUP = 4


# ---------------------------------------------------------------- worker
def _worker(args) -> None:
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    from surgseg_core.sam2_engine import StreamingSAM2, build_model
    from surgseg_core.sam2_engine.device import autocast, pick_device

    device = pick_device("cuda" if args.gpu else "cpu")
    model = build_model(args.config, device=device, seed=0, image_size=args.image_size)
    folder = Path(args.frames_dir)
    n = args.n
    prompts = [(1, [[0.35, 0.45]]), (2, [[0.65, 0.55]])][: args.objects]
    stamps = []

    def tick(labels):
        stamps.append((time.perf_counter(), time.process_time()))

    t0 = time.perf_counter()
    if args.worker in ("engine", "engine-fp32", "engine-compiled"):
        from surgseg_core.io import open_video

        src = open_video(args.mp4 if args.mp4 else folder, stop=n, cache_mb=4)  # read once: no cache needed
        h, w = src.shape[1:3] if hasattr(src, "shape") else np.asarray(src[0]).shape[:2]
        precision = "fp32" if args.worker == "engine-fp32" else None  # None: the default a user gets
        engine = StreamingSAM2(model, src, embed_cache_mb=64, precision=precision,
                               compile_image_encoder=args.worker == "engine-compiled")
        precision_name = engine.precision.name
        for obj, pts in prompts:
            engine.add_points(0, obj, [[x * w, y * h] for x, y in pts], [1])
        engine.propagate(lambda r: tick(r.label_map()))
    else:
        from PIL import Image

        sub = Path(tempfile.mkdtemp(prefix="sam2ref-"))
        for i in range(n):  # SAM2 wants a folder holding exactly the clip
            os.symlink(folder / f"{i:05d}.jpg", sub / f"{i:05d}.jpg")
        w, h = Image.open(folder / "00000.jpg").size
        precision_name = "bf16" if device.type == "cuda" else "fp32"
        with torch.inference_mode(), autocast(device):
            state = model.init_state(str(sub))
            for obj, pts in prompts:
                model.add_new_points_or_box(state, 0, obj, points=[[x * w, y * h] for x, y in pts], labels=[1])
            for _, ids, masks in model.propagate_in_video(state):
                logits = masks[:, 0].float().cpu()
                best, arg = logits.max(0)
                tick(np.where(best.numpy() > 0, np.asarray(ids)[arg.numpy()], 0))
    total = time.perf_counter() - t0
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][WARMUP - 1 :]
    cpu_gaps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][WARMUP - 1 :]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(json.dumps({"precision": precision_name, "threads": torch.get_num_threads(),
                      "frames": len(stamps), "s_per_frame": statistics.median(gaps) if gaps else None,
                      "cpu_s_per_frame": statistics.median(cpu_gaps) if cpu_gaps else None,
                      "total_s": total, "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_mb}))


# ---------------------------------------------------------------- driver
def _make_frames(folder: Path, n: int, height: int, width: int, mp4: bool) -> None:
    import numpy as np
    from PIL import Image

    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(7, n, height, width)
    frames = []
    for i in range(n):
        img = clip.frame(i).image
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=95)
        frames.append(img)
    if mp4:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(str(folder / "clip.mp4"), (width, height), fps=25, quality=9)
        writer.send(None)
        for img in frames:
            writer.send(np.ascontiguousarray(img))
        writer.close()


def _run_case(kind: str, n: int, args, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(n), "--frames-dir", str(folder),
           "--config", args.config, "--image-size", str(args.image_size), "--objects", str(args.objects)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.gpu:
        cmd += ["--gpu"] + (["--mp4", str(folder / "clip.mp4")] if kind != "sam2" and args.mp4_decoding else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(f"{kind} n={n} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {kind:6s} n={n:4d}: {result}", flush=True)
    return result


def _run_rounds(n: int, args, folder: Path) -> tuple:
    """(ours default, ours fp32, SAM2, ours compiled or None) for one clip length: each case
    ``args.rounds`` times, the order reversed every other round (a drift of
    this shared VM's speed then hits all cases alike); per case the medians
    of the rounds' seconds per frame and peak RSS (the largest is noted)."""
    kinds = ["engine", "engine-fp32", "sam2"] + (["engine-compiled"] if args.compile else [])
    runs: dict = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            runs[kind].append(_run_case(kind, n, args, folder))
    merged = []
    for kind in kinds:
        out = dict(runs[kind][0])
        for key in ("s_per_frame", "cpu_s_per_frame", "total_s"):
            out[key] = statistics.median(x[key] for x in runs[kind])
        out["peak_rss_mb"] = statistics.median(x["peak_rss_mb"] for x in runs[kind])
        out["peak_rss_max_mb"] = max(x["peak_rss_mb"] for x in runs[kind])
        merged.append(out)
    return tuple(merged) + ((None,) if not args.compile else ())


def _machine() -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu_name()}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def _table(args, rows, load) -> str:
    # Judged on wall seconds per frame (what a user waits for); CPU seconds of
    # all the worker's threads are shown beside: on a machine shared with
    # other jobs (see the load note) wall time also measures the neighbours.
    threads = rows[0][1]["threads"]
    fast = rows[0][1]["precision"]
    lines = [
        f"Machine: {_machine()}.",
        f"Model: {args.config}, randomly initialised, {args.image_size} px, {args.objects} object(s), "
        f"{'CUDA' if args.gpu else 'CPU'}, {threads} torch thread(s){'' if args.threads else ' (torch default)'}; "
        f"frames {args.height}x{args.width} synthetic endoscopy (JPEG q95). {load} "
        f"Run: `{' '.join(['python', 'benchmarks/propagation.py'] + sys.argv[1:])}`",
        "",
        f"| frames | SAM2 s/frame ({rows[0][3]['precision']}) | ours s/frame (fp32) | ours s/frame (default: {fast}) "
        "| ours fp32 / SAM2 | ours default / SAM2 | SAM2 CPU s/frame | ours fp32 CPU s/frame | ours default CPU s/frame "
        "| SAM2 peak RSS (MB) | ours default peak RSS (MB) | SAM2 total s/frame (incl. init_state) | ours default total s/frame |"
        + (" ours GPU peak (MB) | SAM2 GPU peak (MB) |" if args.gpu else "")
        + (" ours compiled s/frame | ours compiled / SAM2 | ours compiled FPS |" if args.compile else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.gpu else "")
        + ("---:|---:|---:|" if args.compile else ""),
    ]
    for n, ours, ours32, ref, comp in rows:
        lines.append(
            f"| {n} | {ref['s_per_frame']:.3f} | {ours32['s_per_frame']:.3f} | {ours['s_per_frame']:.3f} | "
            f"{ours32['s_per_frame'] / ref['s_per_frame']:.2f} | {ours['s_per_frame'] / ref['s_per_frame']:.2f} | "
            f"{ref['cpu_s_per_frame']:.3f} | {ours32['cpu_s_per_frame']:.3f} | {ours['cpu_s_per_frame']:.3f} | "
            f"{ref['peak_rss_mb']:.0f} | {ours['peak_rss_mb']:.0f} | {ref['total_s'] / n:.3f} | {ours['total_s'] / n:.3f} |"
            + (f" {ours['gpu_peak_mb']:.0f} | {ref['gpu_peak_mb']:.0f} |" if args.gpu else "")
            + (f" {comp['s_per_frame']:.4f} | {comp['s_per_frame'] / ref['s_per_frame']:.2f} | "
               f"{1 / comp['s_per_frame']:.1f} |" if comp else ""))
    mem_ratio = rows[-1][1]["peak_rss_mb"] / rows[0][1]["peak_rss_mb"]
    r32 = statistics.median(o32["s_per_frame"] / r["s_per_frame"] for _, _, o32, r, _ in rows)
    rfast = statistics.median(o["s_per_frame"] / r["s_per_frame"] for _, o, _, r, _ in rows)
    goal = 1.0 if args.gpu else 0.5
    lines += [
        "",
        f"Steady state = median over frames after the first {WARMUP}; each case run {args.rounds} time(s), "
        f"alternating order, medians of the runs (ours' largest single-run peak RSS: "
        f"{max(o.get('peak_rss_max_mb', o['peak_rss_mb']) for _, o, _, _, _ in rows):.0f} MB). "
        f"Memory goal (ours at {rows[-1][0]} frames <= 1.1x ours at {rows[0][0]}): {mem_ratio:.2f}x -> "
        f"{'met' if mem_ratio <= 1.1 else 'NOT met'}. Speed, median over rows: ours float32 {r32:.2f}x SAM2 "
        f"({'met' if r32 <= 1.0 else 'NOT met'}: <= 1.0x); ours default ({fast}) {rfast:.2f}x SAM2 "
        f"({'met' if rfast <= goal else 'NOT met'}: <= {goal}x).",
    ]
    if args.gpu:
        lines.append("FPS = 1 / s_per_frame. Ours decodes " + (
            "the clip as an H.264 mp4 (PyAV) while it tracks" if args.mp4_decoding else
            "the JPEG folder while it tracks (no PyAV / imageio-ffmpeg on this machine: no mp4)")
            + "; SAM2 loads the JPEG folder in init_state (in its total s/frame, not in its steady state).")
        if args.config == "sam2.1_hiera_tiny":
            best = min([o["s_per_frame"] for _, o, _, _, _ in rows] + [c["s_per_frame"] for *_, c in rows if c])
            lines.append(f"Anchor (issue 16): SAM2.1-tiny 91.2 FPS on an A100, fully compiled, frames preloaded, "
                         f"decoding excluded; ours at best {1 / best:.1f} FPS here with decoding included "
                         f"({'met' if 1 / best >= 91.2 else 'NOT met'}: >= 91.2).")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--config", default="sam2.1_hiera_tiny")
    p.add_argument("--image-size", type=int, default=None, help="default 512 on CPU, 1024 with --gpu")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--objects", type=int, default=1, choices=[1, 2])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own, as a user runs it)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of each case per clip length, alternating order; medians (default 2)")
    p.add_argument("--gpu", action="store_true", help="CUDA bf16 run of tiny and small at 1024 px")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--section-suffix", default="", help="write to bench:propagation<suffix>")
    # worker mode (internal)
    p.add_argument("--gpu-configs", nargs="+", default=["sam2.1_hiera_tiny", "sam2.1_hiera_small"],
                   help="models of the --gpu run (default: SAM2.1 tiny and small)")
    p.add_argument("--compile", action="store_true",
                   help="also ours with the image encoder through torch.compile (compile_image_encoder=True, as "
                        "SAM2's vos_optimized predictor); meant for --gpu")
    p.add_argument("--worker", choices=["engine", "engine-fp32", "engine-compiled", "sam2"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frames-dir", help=argparse.SUPPRESS)
    p.add_argument("--mp4", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.image_size is None:
        args.image_size = 1024 if args.gpu else 512
    if args.worker:
        _worker(args)
        return 0
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs CUDA; none here", file=sys.stderr)
            return 2
    # with --gpu our engine decodes an mp4 (PyAV), as a user's video; where PyAV / imageio-ffmpeg are missing
    # (a lent GPU machine's image has neither, and PyAV's 35 MB wheel does not travel with the repo) it reads the
    # JPEG folder SAM2 loads, decoding included either way; the table says which
    args.mp4_decoding = args.gpu and all(importlib.util.find_spec(m) for m in ("av", "imageio_ffmpeg"))
    configs = args.gpu_configs if args.gpu else [args.config]
    bodies = []
    with tempfile.TemporaryDirectory(prefix="bench-prop-") as tmp:
        folder = Path(tmp)
        _make_frames(folder, max(args.frames), args.height, args.width, mp4=args.mp4_decoding)
        for config in configs:
            args.config = config
            print(f"{config} @ {args.image_size}px", flush=True)
            load_start = os.getloadavg()[0]
            rows = [(n, *_run_rounds(n, args, folder)) for n in args.frames]
            bodies.append(_table(args, rows, load_note(load_start, os.getloadavg()[0])))
    body = "\n\n".join(bodies)
    print(body)
    if not args.no_write:
        write_section("propagation" + ("-gpu" if args.gpu else "") + args.section_suffix, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
