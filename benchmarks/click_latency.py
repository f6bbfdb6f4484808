"""Benchmark: RP-SAM2 click latency against plain SAM2, through the click
session (what the click widget runs), in the same run, click by click.

  first click  = 1 positive click on a frame not encoded yet (image encoder,
                 then for RP-SAM2 the block's per-frame keys, the block and
                 the decoder);
  cached click = another single click on that frame (plain: prompt encoder +
                 decoder; RP-SAM2: + the click's side of the shift block,
                 whose image-side keys/values are cached per frame).
Same model object (randomly initialised: no weights can be downloaded here;
speed does not depend on the weights), shift block with the paper's 6 layers,
same frames (synthetic endoscopy 480x640), masks upsampled to the video
size. Medians over ``--first-reps`` frames / ``--cached-reps`` clicks after
one warm-up. Goals (issue 12): cached click <= 30 ms on CPU at 1024 px and
<= 1.3x plain SAM2's decoder-only click.
Both run with the default precision ("auto": bf16 at >= 512 px on a CPU with
native bf16, else float32; the table names it); the cached clicks also run in
float32.

Run:        python benchmarks/click_latency.py
Short run:  python benchmarks/click_latency.py --first-reps 2 --cached-reps 10
Writes its table into BENCHMARKS.md between <!-- bench:click_latency --> markers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script


def bench_case(config: str, size: int, frames, first_reps: int, cached_reps: int, device: str) -> dict:
    import torch

    from surgseg_core.device import resolve_inference_precision
    from surgseg_core.methods.rpsam2.model import RPSAM2
    from surgseg_core.sam2_engine import ClickSession, build_model

    sam = build_model(config, device=device, seed=0, image_size=size)
    rp = RPSAM2(sam)
    with torch.no_grad():  # a block that moves points (an untrained one returns them unchanged: same work)
        rp.shift.delta.weight.normal_(0, 0.1)
    h, w = frames.shape[1:3]
    n = len(frames)
    plain, refined = ClickSession(embed_cache_mb=4096), rp.click_session(embed_cache_mb=4096)
    plain32 = ClickSession(embed_cache_mb=4096, precision="fp32")
    refined32 = rp.click_session(embed_cache_mb=4096, precision="fp32")

    def prompt(frame, k):
        x, y = (0.3 + 0.02 * (k % 10)) * w, (0.5 + 0.01 * (k % 7)) * h
        return [{"frame": frame, "obj_id": 1, "points": [[x, y]], "labels": [1], "box": None}]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    cases = {
        "plain_first": lambda i: plain.segment_frame(frames, sam, i, prompt(i, 0)),
        "rp_first": lambda i: refined.segment_frame(frames, sam, i, prompt(i, 0)),
        "plain_cached": lambda k: plain.segment_frame(frames, sam, 0, prompt(0, k)),
        "rp_cached": lambda k: refined.segment_frame(frames, sam, 0, prompt(0, k)),
        "plain_cached_fp32": lambda k: plain32.segment_frame(frames, sam, 0, prompt(0, k)),
        "rp_cached_fp32": lambda k: refined32.segment_frame(frames, sam, 0, prompt(0, k)),
    }
    times = {k: [] for k in cases}
    for k in ("plain_first", "rp_first"):  # warm-up on a frame the timed first clicks do not use
        cases[k](n - 1)
    for i in range(1, first_reps + 1):
        for k in ("plain_first", "rp_first"):
            sync()
            t0 = time.perf_counter()
            cases[k](i)
            sync()
            times[k].append(time.perf_counter() - t0)
    # one pair of sessions at a time: the decoder keeps the image-side work of
    # 2 frames per model (fast_heads.MAX_FRAMES), and each session holds its own frame 0
    for cached in (("plain_cached", "rp_cached"), ("plain_cached_fp32", "rp_cached_fp32")):
        for k in cached:  # frame 0 encoded (and the block's keys) by each session
            cases[k](0)
        for j in range(cached_reps):
            for k in cached:
                sync()
                t0 = time.perf_counter()
                cases[k](j + 1)
                sync()
                times[k].append(time.perf_counter() - t0)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    precision = resolve_inference_precision("auto", torch.device(device), size).name
    return {"config": config, "size": size, "precision": precision,
            "block_params": rp.num_parameters()["shift_block"], **med}


def table(rows, args, threads: int) -> str:
    import torch

    where = (f"GPU {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda")
             else f"{cpu_name()}, {threads} torch thread(s), no GPU")
    lines = [
        f"Machine: {where}, torch {torch.__version__}. Models randomly initialised (speed does not depend on the "
        f"weights); frames {args.height}x{args.width} synthetic endoscopy; shift block 6 layers. Medians: first click "
        f"over {args.first_reps} new frames, cached click over {args.cached_reps} clicks, after one warm-up; "
        f"{load_note(args.load[0], os.getloadavg()[0])}. Run: `python "
        f"benchmarks/click_latency.py --first-reps {args.first_reps} --cached-reps {args.cached_reps}"
        f"{' --device ' + args.device if args.device != 'cpu' else ''}` ({time.strftime('%Y-%m-%d %H:%M')}).",
        "",
        "| model | px | default precision | block params | plain 1st click (ms) | RP-SAM2 1st click (ms) "
        "| plain cached click (ms) | RP-SAM2 cached click (ms) | cached RP-SAM2 / plain "
        "| fp32: plain cached (ms) | fp32: RP-SAM2 cached (ms) | fp32: RP-SAM2 / plain |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['size']} | {r['precision']} | {r['block_params'] / 1e6:.2f} M | "
            f"{r['plain_first']:.0f} | {r['rp_first']:.0f} | {r['plain_cached']:.1f} | {r['rp_cached']:.1f} | "
            f"{r['rp_cached'] / r['plain_cached']:.2f}x | {r['plain_cached_fp32']:.1f} | {r['rp_cached_fp32']:.1f} | "
            f"{r['rp_cached_fp32'] / r['plain_cached_fp32']:.2f}x |"
        )
    goal = [r for r in rows if r["config"] == "sam2.1_hiera_tiny" and r["size"] == 1024]
    if goal:
        r = goal[0]
        ratio = r["rp_cached"] / r["plain_cached"]
        lines += ["", f"Goals at 1024 px, sam2.1_hiera_tiny ({'GPU' if args.device != 'cpu' else 'CPU'}, default "
                  f"precision {r['precision']}): cached "
                  f"RP-SAM2 click {r['rp_cached']:.1f} ms (<= 30 ms: {'met' if r['rp_cached'] <= 30 else 'NOT met'}); "
                  f"{ratio:.2f}x plain SAM2's cached click (<= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'}). "
                  f"In float32: {r['rp_cached_fp32']:.1f} ms, {r['rp_cached_fp32'] / r['plain_cached_fp32']:.2f}x plain. "
                  "The block's attention is folded onto the click (one i* per frame, not six layers' keys and values)."]
    return "\n".join(lines)


def main() -> None:
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["sam2.1_hiera_tiny:1024", "sam2.1_hiera_tiny:512",
                                                   "surgseg_demo256:256"], help="CONFIG:SIZE")
    p.add_argument("--first-reps", type=int, default=3)
    p.add_argument("--cached-reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default, as a user runs it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--section", default="click_latency", help="BENCHMARKS.md section name")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    args.load = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    from surgseg_core.synth import generate_endoscopy_clip

    n = args.first_reps + 2
    clip = generate_endoscopy_clip(0, n, args.height, args.width)
    frames = np.stack([clip.frame(i).image for i in range(n)])
    rows = []
    for case in args.cases:
        config, _, size = case.partition(":")
        rows.append(bench_case(config, int(size), frames, args.first_reps, args.cached_reps, args.device))
        print(rows[-1], flush=True)
    text = table(rows, args, torch.get_num_threads())
    print(text)
    if not args.no_write:
        title = "## RP-SAM2 click latency (cached click = shift block + decoder)"
        if args.device != "cpu":
            title += f" on {args.device}"
        write_section(args.section, title + "\n\n" + text)


if __name__ == "__main__":
    main()
