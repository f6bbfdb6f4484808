"""Benchmark: per-frame time of the tool landmark pipeline's stages.

Runs ``surgseg_core.methods.tools.predict.predict_source`` (the one
prediction path) over a synthetic 320 x 240 clip with demo-size networks
(random init: speed does not depend on the weights) and splits the time into
frame reading (window + resize), coarse network, mask prior (SAM2 image
encoder + prompt decoder, surgseg_tiny and hiera-tiny configs) and
refinement, plus decoding; the share spent in SAM2 is prior / total. Goal
(issue 13): >= 30 FPS end to end on GPU with hiera-tiny; on CPU we report
frames per second. The table goes into BENCHMARKS.md between
``<!-- bench:tool_landmarks -->`` markers.

    python benchmarks/tool_landmarks.py [--frames 24] [--hiera-frames 6] [--device cpu] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from _bench_md import cpu_name, load_note, write_section  # benchmarks/ is on sys.path when run as a script

SECTION = "tool_landmarks"
# the bundled demo networks' architecture (sample_data/tools_demo), random init
ARCH = ("k", "input_width", "input_height", "encoder", "encoder_weights", "encoder_depth", "decoder_channels")


def _demo() -> dict:
    from surgseg_core.methods.tools.demo import DEMO_CONFIG

    return {"stage": "refine", "use_prior": True, "aux_weight": 0.5, **{k: DEMO_CONFIG[k] for k in ARCH}}


def run(sam2_config: str, frames: int, device: str, clip_dir: Path, refine: bool = True) -> dict:
    from surgseg_core.io import open_video
    from surgseg_core.methods.tools.model import build_from_config
    from surgseg_core.methods.tools.predict import predict_source
    from surgseg_core.methods.tools.prior import build_sam2_prior
    from surgseg_core.methods.tools.spec import SPEC
    from surgseg_core.training.trainer import resolve_config

    cfg = resolve_config(SPEC, {**_demo(), "device": device, "prior_sam2_config": sam2_config,
                                **({} if refine else {"stage": "coarse"})})
    model = build_from_config(cfg).to(device).eval()
    provider = build_sam2_prior(cfg, device=device) if refine else None
    with open_video(clip_dir / "video.mp4") as src:
        predict_source(model, src, cfg, start=0, stop=3, provider=provider)  # warm-up
        timings: dict = {}
        t0 = time.perf_counter()
        predict_source(model, src, cfg, start=0, stop=frames, provider=provider, timings=timings)
        total = time.perf_counter() - t0
    return {"total": total, "frames": frames, **timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hiera-frames", type=int, default=6, help="frames timed with hiera-tiny (slow on CPU)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    from surgseg_core.synth import write_synthetic_clip

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_synthetic_clip(Path(tmp) / "clip", seed=0, n_frames=args.frames, height=240, width=320)
        runs = [("coarse only", run("surgseg_tiny", args.frames, args.device, clip, refine=False)),
                ("coarse + SAM2 prior (surgseg_tiny, 128 px) + refine",
                 run("surgseg_tiny", args.frames, args.device, clip)),
                ("coarse + SAM2 prior (demo SAM2 architecture, 256 px) + refine",
                 run("surgseg_demo256", args.frames, args.device, clip)),
                ("coarse + SAM2 prior (hiera-tiny, 1024 px) + refine",
                 run("sam2.1_hiera_t", min(args.frames, args.hiera_frames), args.device, clip))]
    ms = lambda r, k: 1000.0 * r.get(k, 0.0) / r["frames"]  # noqa: E731
    demo = _demo()
    lines = [
        "## Tool landmarks (`surgseg_core.methods.tools`, `benchmarks/tool_landmarks.py`)",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, device {args.device}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; {load_note(load, os.getloadavg()[0])}. "
        f"The bundled demo networks' architecture (ResNet18 U-Nets, depth {demo['encoder_depth']}, "
        f"{demo['input_width']} x {demo['input_height']} input, k = {demo['k']}), random init; SAM2 random init "
        "(speed only). Synthetic 320 x 240 clip, "
        f"{args.frames} frames ({min(args.frames, args.hiera_frames)} with hiera-tiny) after 3 warm-up frames; "
        "ms per frame.",
        "",
        "| pipeline | read + resize | coarse | prior (SAM2) | refine | decode | total | FPS | SAM2 share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        total = ms(r, "total")
        lines.append(f"| {name} | {ms(r, 'read'):.1f} | {ms(r, 'coarse'):.1f} | {ms(r, 'prior'):.1f} | "
                     f"{ms(r, 'refine'):.1f} | {ms(r, 'decode'):.1f} | {total:.1f} | {1000.0 / total:.3g} | "
                     f"{100.0 * ms(r, 'prior') / total:.0f} % |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
