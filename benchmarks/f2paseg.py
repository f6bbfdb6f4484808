"""Benchmark: F2PASeg vs plain SAM2 propagation, per frame.

Same architecture (randomly initialised: no weights can be downloaded here,
and time does not depend on the weights' values; F2PASeg = the same SAM2
plus its fusion module), same frames (a synthetic endonasal clip with the
six anatomy classes, read and decoded from an mp4 by the streaming engine),
same prompts (a box per visible class every 10 frames, from the clip's
masks: 4-6 objects), same prompt partitioning for both (F2PASeg's two latest
prompted frames), so the difference is the fusion module alone. Forward
propagation; seconds per frame = median time between two emitted frames
after the first 4, over ``--repeats`` alternating runs of the two models.
Goal: F2PASeg <= 1.05x plain SAM2 per frame.

CPU (default):  python benchmarks/f2paseg.py            (surgseg_tiny and sam2.1_hiera_tiny at 512 px,
                torch's default thread count unless --threads)
GPU:            python benchmarks/f2paseg.py --gpu      (sam2.1_hiera_tiny at 1024 px, bf16 autocast,
                decoding included; FPS = 1 / s per frame; the paper: 28.57 FPS on an A100)
Writes its table into BENCHMARKS.md between <!-- bench:f2paseg --> (or f2paseg-gpu) markers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench_md import write_section  # benchmarks/ is on sys.path when run as a script

WARMUP = 4


def _make_clip(folder: Path, n: int, height: int, width: int):
    """mp4 of a synthetic anatomy clip and its box prompts ({frame: {class: box}})."""
    import imageio_ffmpeg
    import numpy as np

    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_clip
    from surgseg_core.methods.f2paseg.data import box_prompts

    clip, _ = synthetic_anatomy_clip(5, n, height, width)
    writer = imageio_ffmpeg.write_frames(str(folder / "clip.mp4"), (width, height), fps=25, quality=9)
    writer.send(None)
    for i in range(n):
        writer.send(np.ascontiguousarray(clip.frame(i)))
    writer.close()
    return folder / "clip.mp4", box_prompts(clip, every=10)


def _run(model, mp4: Path, n: int, prompts) -> dict:
    import torch

    from surgseg_core.io import open_video
    from surgseg_core.methods.f2paseg.data import add_box_prompts
    from surgseg_core.sam2_engine import StreamingSAM2

    stamps = []
    src = open_video(mp4, stop=n, cache_mb=4)
    engine = StreamingSAM2(model, src, keep_recent_prompt_frames=2, embed_cache_mb=64)
    t0 = time.perf_counter()
    add_box_prompts(engine, {t: b for t, b in prompts.items() if t < n})

    def sink(result):
        result.label_map()  # merged class map on the CPU: what a user gets (syncs a GPU)
        stamps.append((time.perf_counter(), time.process_time()))

    engine.propagate(sink)
    total = time.perf_counter() - t0
    close = getattr(src, "close", None)
    if close:
        close()
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][WARMUP - 1:]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][WARMUP - 1:]
    return {"wall": wall, "cpu": cpu, "total_s": total, "frames": len(stamps)}


def _case(config: str, size: int, device: str, mp4: Path, n: int, prompts, repeats: int) -> dict:
    import torch

    from surgseg_core.methods.f2paseg.model import build_f2paseg
    from surgseg_core.sam2_engine import build_model

    models = {"sam2": build_model(config, device=device, seed=0, image_size=size),
              "f2paseg": build_f2paseg(config, device=device, seed=0, image_size=size)}
    with torch.no_grad():  # non-zero fusion weights, as after fine-tuning (same cost either way)
        for p in models["f2paseg"].sam_mask_decoder.fusion.parameters():
            p.add_(0.01)
    out = {k: {"wall": [], "cpu": [], "total_s": 0.0, "frames": 0} for k in models}
    _run(models["sam2"], mp4, min(n, WARMUP + 2), prompts)  # first-call costs (allocator, kernels) out of the way
    for _ in range(repeats):
        for kind, model in models.items():  # alternate: a busy neighbour slows both alike
            r = _run(model, mp4, n, prompts)
            for key in ("wall", "cpu"):
                out[kind][key] += r[key]
            out[kind]["total_s"] += r["total_s"]
            out[kind]["frames"] += r["frames"]
            print(f"  {config} {kind}: {statistics.median(r['wall']):.4f} s/frame wall", flush=True)
    return {k: {"wall": statistics.median(v["wall"]), "cpu": statistics.median(v["cpu"]),
                "total": v["total_s"] / v["frames"]} for k, v in out.items()}


def _machine(device: str) -> str:
    import torch

    from surgseg_core.device import describe_device

    gpu = "" if device == "cuda" else (", GPU present but unused" if torch.cuda.is_available() else ", no GPU")
    return f"{describe_device(device)}, {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=None, help="default: surgseg_tiny sam2.1_hiera_tiny (CPU), "
                   "sam2.1_hiera_tiny (--gpu)")
    p.add_argument("--image-size", type=int, default=None, help="default 512 on CPU, 1024 with --gpu")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, as a user runs)")
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16 autocast")
    p.add_argument("--note", default="", help="a line added under the table (e.g. the machine was shared)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs CUDA; none here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.gpu else "cpu"
    size = args.image_size or (1024 if args.gpu else 512)
    configs = args.configs or (["sam2.1_hiera_tiny"] if args.gpu else ["surgseg_tiny", "sam2.1_hiera_tiny"])
    key = "wall" if args.gpu else "cpu"  # CPU seconds on a shared CPU; wall time on a GPU
    from surgseg_core.device import resolve_inference_precision

    precision = resolve_inference_precision("auto", torch.device(device), size).name  # what the engine runs
    lines = [
        f"## F2PASeg vs plain SAM2, per frame (`benchmarks/f2paseg.py`{' --gpu' if args.gpu else ''})",
        "",
        f"Machine: {_machine(device)}.",
        f"Models: random-init, {size} px, {device.upper()}, the engine's default precision (auto: {precision}), "
        f"{torch.get_num_threads()} torch thread(s); {args.frames} frames {args.height}x{args.width} of a synthetic "
        "anatomy clip decoded from mp4; a box per visible class every 10 frames; prompt partitioning (2) for both. "
        f"Run: `{' '.join(['python', 'benchmarks/f2paseg.py'] + sys.argv[1:])}`",
        "",
        "| model | objects | SAM2 CPU s/frame | F2PASeg CPU s/frame | ratio | SAM2 wall s/frame | F2PASeg wall s/frame "
        "| SAM2 total s/frame | F2PASeg total s/frame |" + (" SAM2 FPS | F2PASeg FPS |" if args.gpu else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.gpu else ""),
    ]
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-f2paseg-") as tmp:
        mp4, prompts = _make_clip(Path(tmp), args.frames, args.height, args.width)
        objects = len({c for b in prompts.values() for c in b})
        for config in configs:
            print(f"{config} @ {size}px on {device}", flush=True)
            r = _case(config, size, device, mp4, args.frames, prompts, args.repeats)
            ratio = r["f2paseg"][key] / r["sam2"][key]
            ratios.append((config, ratio))
            lines.append(f"| {config} | {objects} | {r['sam2']['cpu']:.4f} | {r['f2paseg']['cpu']:.4f} | {ratio:.3f} | "
                         f"{r['sam2']['wall']:.4f} | {r['f2paseg']['wall']:.4f} | {r['sam2']['total']:.4f} | "
                         f"{r['f2paseg']['total']:.4f} |"
                         + (f" {1 / r['sam2']['wall']:.2f} | {1 / r['f2paseg']['wall']:.2f} |" if args.gpu else ""))
    verdict = "; ".join(f"{c}: {x:.3f}x -> {'met' if x <= 1.05 else 'NOT met'}" for c, x in ratios)
    lines += ["", f"Steady state = median over frames after the first {WARMUP}, {args.repeats} alternating runs each; "
              f"ratio = F2PASeg / SAM2 {'wall' if args.gpu else 'CPU'} seconds per frame ('total' includes the "
              f"prompted frames and the start). Goal (fusion <= 5 % per frame): {verdict}."]
    if args.note:
        lines.append(args.note)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("f2paseg" + ("-gpu" if args.gpu else ""), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
