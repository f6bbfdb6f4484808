"""Command line for the synthetic data generator:
``python -m surgseg_core.synth {clip,liver,sample-data} ...``.
``register(subparsers)`` also lets the ``surgseg`` CLI mount it as a
subcommand."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import Cancelled, SurgsegError
from ..progress import TextProgress

# What sample_data/ holds; tests regenerate exactly this and compare.
SAMPLE_CLIP = dict(seed=0, n_frames=60, height=240, width=320, fps=25.0)
SAMPLE_LIVER = dict(seed=0, n_frames=12, height=320, width=416, fps=10.0)

_EPILOG = """examples:
  python -m surgseg_core.synth clip out/clip --seed 3 --frames 48 --height 240 --width 320
  python -m surgseg_core.synth clip out/rare --seed 4 --absent-classes 3 5   # a patient without IP and OCR
  python -m surgseg_core.synth liver out/liver --seed 1 --frames 200 --line-width 6
  python -m surgseg_core.synth sample-data sample_data   # regenerate the repository's sample data
"""


def make_sample_data(root, progress=None) -> Path:
    """(Re)generate ``root/synthetic_clip`` and ``root/synthetic_liver``
    exactly as committed in the repository's sample_data/."""
    from .writer import write_liver_dataset, write_synthetic_clip

    root = Path(root)
    write_synthetic_clip(root / "synthetic_clip", progress=progress, **SAMPLE_CLIP)
    write_liver_dataset(root / "synthetic_liver", progress=progress, **SAMPLE_LIVER)
    return root


def _run(args: argparse.Namespace) -> int:
    from .writer import write_liver_dataset, write_synthetic_clip

    progress = None if args.quiet else TextProgress(args.synth_kind)
    if args.synth_kind == "clip":
        out = write_synthetic_clip(args.out_dir, seed=args.seed, n_frames=args.frames, height=args.height,
                                   width=args.width, fps=args.fps, progress=progress,
                                   absent_classes=args.absent_classes)  # fmt: skip
    elif args.synth_kind == "liver":
        out = write_liver_dataset(args.out_dir, seed=args.seed, n_frames=args.frames, height=args.height,
                                  width=args.width, line_width=args.line_width, fps=args.fps,
                                  progress=progress)  # fmt: skip
    else:
        out = make_sample_data(args.out_dir, progress=progress)
    logging.getLogger(__name__).info("wrote %s", out)
    return 0


def _add_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    clip = sub.add_parser("clip", help="synthetic endoscopy clip with instrument, landmark and anatomy ground truth",
                          formatter_class=fmt, epilog=_EPILOG)  # fmt: skip
    liver = sub.add_parser("liver", help="synthetic liver scene with silhouette/ridge/ligament ground truth",
                           formatter_class=fmt, epilog=_EPILOG)  # fmt: skip
    sample = sub.add_parser("sample-data", help="regenerate sample_data/ (clip + liver scene)",
                            formatter_class=fmt, epilog=_EPILOG)  # fmt: skip
    for p, defaults in ((clip, SAMPLE_CLIP | dict(n_frames=48)), (liver, SAMPLE_LIVER | dict(n_frames=40))):
        p.add_argument("out_dir", help="output folder (created; must be empty or a previous output of this command)")
        p.add_argument("--seed", type=int, default=0, help="random seed (same seed = identical files)")
        p.add_argument("--frames", type=int, default=defaults["n_frames"], help="number of frames")
        p.add_argument("--height", type=int, default=defaults["height"], help="frame height in pixels (even)")
        p.add_argument("--width", type=int, default=defaults["width"], help="frame width in pixels (even)")
        p.add_argument("--fps", type=float, default=defaults["fps"], help="frame rate of video.mp4")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    clip.add_argument(
        "--absent-classes", type=int, nargs="+", default=[], metavar="CLASS",
        help="anatomy classes this patient lacks (1 SF, 2 TS, 3 IP, 4 CR, 5 OCR, 6 OP), e.g. 3 5: "
             "rare-class imbalance as in F2PASeg's data",
    )  # fmt: skip
    liver.add_argument(
        "--line-width", type=int, default=None, help="curve thickness in the masks (default 2%% of the shorter side)"
    )
    sample.add_argument("out_dir", help="sample_data folder")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    clip.set_defaults(func=_run, synth_kind="clip")
    liver.set_defaults(func=_run, synth_kind="liver")
    sample.set_defaults(func=_run, synth_kind="sample-data")


def register(subparsers) -> None:
    """Mount as ``surgseg synth {clip,liver,sample-data}``."""
    parser = subparsers.add_parser(
        "synth", help="generate synthetic endoscopy data with ground truth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG.replace("python -m surgseg_core.synth", "surgseg synth"),
    )  # fmt: skip
    _add_parsers(parser.add_subparsers(dest="synth_command", metavar="KIND", required=True))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m surgseg_core.synth",
        description="Generate deterministic synthetic endoscopy data with ground truth.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
    )  # fmt: skip
    _add_parsers(parser.add_subparsers(dest="synth_command", metavar="KIND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except Cancelled as exc:
        print(f"surgseg synth: {exc}", file=sys.stderr)
        return 130
    except SurgsegError as exc:
        print(f"surgseg synth: {exc}", file=sys.stderr)
        return 1
