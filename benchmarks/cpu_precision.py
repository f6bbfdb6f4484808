"""Benchmark: where bf16 pays on this CPU, part by part (what
``device.resolve_inference_precision("auto")`` decides on).

For each model and size, in one process (interleaved: one call of each
precision per round, the order reversed every other round, so machine load
hits every variant alike): SAM2's image encoder on one frame, the prompt
encoder + mask decoder on encoded features (one click, multimask, as a
cached click), and one propagation step of the streaming engine (memory
attention + decoder + memory encoder + encoder), under float32, float32
with the exact reorderings ("fp32-fast", auto's choice where bf16 does not
pay), bf16 autocast throughout, and bf16 for the image encoder only. Random-init
weights (speed does not depend on them), torch's default threads.

Run:  python benchmarks/cpu_precision.py [--repeats 5] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script

CASES = [("surgseg_demo256", 256), ("sam2.1_hiera_tiny", 512), ("sam2.1_hiera_tiny", 1024)]
PRECISIONS = ("fp32", "fp32-fast", "bf16", "bf16-encoder")


def _order(r: int) -> tuple:
    """The precisions in round ``r``: reversed every other round, so a drift of this shared VM's speed hits all."""
    return PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def measure(config: str, size: int, repeats: int, rounds: int = 2) -> dict:
    import contextlib

    import numpy as np
    import torch

    from surgseg_core.device import autocast, resolve_inference_precision
    from surgseg_core.sam2_engine import StreamingSAM2, build_model
    from surgseg_core.sam2_engine.heads import decode_masks, encode_frames, reordered_float32
    from surgseg_core.synth import generate_endoscopy_clip

    cpu = torch.device("cpu")
    kwargs = {} if config.startswith("surgseg") else {"image_size": size}
    model = build_model(config, device="cpu", seed=0, **kwargs)
    clip = generate_endoscopy_clip(7, repeats + 3, 240, 320)
    frames = np.stack([clip.frame(i).image for i in range(len(clip))])
    x = torch.randn(1, 3, model.image_size, model.image_size)
    pts = torch.tensor([[[model.image_size / 2, model.image_size / 2]]])
    lbl = torch.ones(1, 1, dtype=torch.int32)
    times = {name: {"encoder_ms": [], "decoder_ms": [], "step_ms": []} for name in PRECISIONS}
    calls = {}
    with torch.inference_mode():
        for name in PRECISIONS:
            prec = resolve_inference_precision(name, cpu)

            def ctx(dtype, prec=prec):
                stack = contextlib.ExitStack()
                stack.enter_context(autocast(cpu, dtype or torch.float32))
                stack.enter_context(reordered_float32(prec.reordered))
                return stack

            def enc(ctx=ctx, prec=prec):
                with ctx(prec.encoder):
                    return encode_frames(model, x)

            feats = enc()  # also the warm-up (first-call allocations, oneDNN kernel selection)
            if prec.heads is None:
                feats = feats._replace(backbone_fpn=[f.float() for f in feats.backbone_fpn],
                                       vision_pos_enc=[p.float() for p in feats.vision_pos_enc])

            def dec(ctx=ctx, prec=prec, feats=feats):
                with ctx(prec.heads):
                    return decode_masks(model, feats, point_coords=pts, point_labels=lbl, multimask_output=True)

            dec()
            calls[name] = (enc, dec)
        for r in range(repeats):  # interleaved, one call of each precision per round
            for name in _order(r):
                enc, dec = calls[name]
                times[name]["encoder_ms"].append(_timed(enc))
                times[name]["decoder_ms"].append(_timed(dec))
    for r in range(rounds):
        for name in _order(r):
            engine = StreamingSAM2(model, frames, precision=name, embed_cache_mb=0)
            engine.add_points(0, 1, [[160, 120]], [1])
            stamps = []
            engine.propagate(lambda res: stamps.append(time.perf_counter()))
            steps = [b - a for a, b in zip(stamps, stamps[1:])][2:]
            times[name]["step_ms"].append(1000 * statistics.median(steps))
    out = {name: {key: statistics.median(v) for key, v in parts.items()} for name, parts in times.items()}
    for name in PRECISIONS:
        print(f"  {config} @ {size}: {name}: {out[name]}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    import warnings

    import torch

    from surgseg_core.device import cpu_has_fast_bf16, resolve_inference_precision

    warnings.filterwarnings("ignore")
    load_start = os.getloadavg()[0]
    rows = [(c, s, measure(c, s, args.repeats)) for c, s in CASES]
    auto = resolve_inference_precision("auto", torch.device("cpu")).name
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} "
        f"torch threads (default); native bf16: {'yes' if cpu_has_fast_bf16() else 'no'} (so \"auto\" = {auto}). "
        f"Medians of {args.repeats} interleaved calls after a warm-up (propagation steps: medians of 2 runs "
        f"alternating the order); random-init weights. {load_note(load_start, os.getloadavg()[0])}. "
        f"Run: `python benchmarks/cpu_precision.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| model @ size | part | fp32 ms | fp32-fast ms | bf16 ms | bf16-encoder ms | fp32-fast speed-up | bf16 speed-up "
        "| bf16-encoder speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, size, r in rows:
        for part, key in (("image encoder", "encoder_ms"), ("prompt encoder + mask decoder (cached click)", "decoder_ms"),
                          ("propagation step (whole frame)", "step_ms")):
            f32, fast, b16, enc = (r[name][key] for name in PRECISIONS)
            lines.append(f"| {config} @ {size} | {part} | {f32:.1f} | {fast:.1f} | {b16:.1f} | {enc:.1f} | "
                         f"{f32 / fast:.2f}x | {f32 / b16:.2f}x | {f32 / enc:.2f}x |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("cpu-precision", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
