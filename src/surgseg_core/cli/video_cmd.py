"""``surgseg video``: inspect videos, TIFF stacks and frame folders."""
from __future__ import annotations

import argparse
import json
import sys

_INFO_EXAMPLES = """\
examples:
  surgseg video info clip.mp4
  surgseg video info frames_folder/ --json
  surgseg video info 'seq/frame_*_endo.png'     # one image series of a folder holding several
  surgseg video info clip.mp4 --start 100 --stop 400 --step 5 --downscale 2
"""


def register(subparsers) -> None:
    video = subparsers.add_parser(
        "video",
        help="inspect surgical videos, TIFF stacks and frame folders",
        description="Inspect surgical videos, multi-page TIFF stacks and folders of numbered frames.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_INFO_EXAMPLES,
    )
    sub = video.add_subparsers(dest="video_command", metavar="SUBCOMMAND")
    video.set_defaults(func=lambda args: (video.print_help(), 2)[1])

    info = sub.add_parser(
        "info",
        help="print frame rate, duration, codec, size and frame count",
        description="Print what surgseg knows about a video without decoding its frames.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_INFO_EXAMPLES,
    )
    info.add_argument("path", help="video file (mp4 avi mov mkv m4v webm), TIFF stack or folder of numbered frames")
    info.add_argument("--json", action="store_true", help="print all metadata (timestamps included) as JSON")
    add_range_arguments(info)
    info.set_defaults(func=_info)


def add_range_arguments(parser: argparse.ArgumentParser) -> None:
    """Frame-selection options shared by commands that open a video."""
    g = parser.add_argument_group("frame selection")
    g.add_argument("--start", type=int, default=0, help="first frame (0-based, default 0)")
    g.add_argument("--stop", type=int, default=None, help="frame to stop before (default: the end)")
    g.add_argument("--step", type=int, default=1, help="keep every STEP-th frame (default 1)")
    g.add_argument("--downscale", type=int, default=1, help="shrink width and height by this factor (default 1)")


def open_from_args(path: str, args: argparse.Namespace):
    from ..io import open_video

    return open_video(path, start=args.start, stop=args.stop, step=args.step, downscale=args.downscale)


def _fmt(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.{digits}g}{unit}"
    return f"{value}{unit}"


def _info(args: argparse.Namespace) -> int:
    src = open_from_args(args.path, args)
    try:
        meta = src.metadata
        if args.json:
            json.dump(meta.to_dict(), sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        lines = [
            f"path:        {meta.path}",
            f"format:      {meta.format}",
            f"codec:       {_fmt(meta.codec)}",
            f"size:        {meta.width}x{meta.height}"
            + (f" (source {meta.source_width}x{meta.source_height})" if meta.downscale != 1 else ""),
            f"fps:         {_fmt(meta.fps, digits=6)}" + ("  (variable frame rate)" if meta.variable_frame_rate else ""),
            f"duration:    {_fmt(meta.duration, ' s', digits=6)}",
            f"frames:      {meta.n_frames} selected of {meta.source_n_frames}"
            + (f" (start {meta.start}, stop {meta.stop}, step {meta.step})" if meta.n_frames != meta.source_n_frames else ""),
        ]
        print("\n".join(lines))
        return 0
    finally:
        src.close()
