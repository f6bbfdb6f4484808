"""``surgseg export``: overlay videos and label format conversion.

Same code path as the napari writers and the export widget
(:mod:`surgseg_core.io.export`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import DatasetError
from ..progress import TextProgress
from .video_cmd import add_range_arguments, open_from_args

log = logging.getLogger(__name__)

_OVERLAY_EXAMPLES = """\
examples:
  surgseg export overlay clip.mp4 --labels masks.tif --out overlay.mp4
  surgseg export overlay clip.mp4 --labels masks_png/ --points tips.csv --alpha 0.4 --out overlay.mp4
  # labels drawn on every 5th frame of frames 100..399 (the same selection as when annotating):
  surgseg export overlay clip.mp4 --start 100 --stop 400 --step 5 --labels masks.tif --out overlay.mp4

Points CSV columns: frame,x,y[,label,...] (frame is the index in the selected frames).
"""

_LABELS_EXAMPLES = """\
examples:
  surgseg export labels masks.tif --out masks_png/      # TIFF stack -> 000000.png, 000001.png, ...
  surgseg export labels masks_png/ --out masks.tif      # PNG folder -> compressed multi-page TIFF
"""


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="overlay videos, label format conversion",
        description="Export overlay videos and convert label masks between TIFF stacks and PNG folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_OVERLAY_EXAMPLES + "\n" + _LABELS_EXAMPLES,
    )
    sub = export.add_subparsers(dest="export_command", metavar="SUBCOMMAND")
    export.set_defaults(func=lambda args: (export.print_help(), 2)[1])

    overlay = sub.add_parser(
        "overlay",
        help="draw labels and points onto a video and save it as H.264 MP4",
        description="Blend label colours and draw points onto every frame, streaming to an H.264 MP4.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_OVERLAY_EXAMPLES,
    )
    overlay.add_argument("video", help="video file, TIFF stack or folder of numbered frames")
    overlay.add_argument("--out", required=True, help="output .mp4 file")
    overlay.add_argument("--labels", help="label TIFF stack or folder of numbered PNG masks (one per frame)")
    overlay.add_argument("--points", help="points CSV (frame,x,y[,...])")
    overlay.add_argument("--alpha", type=float, default=0.5, help="label opacity 0..1 (default 0.5)")
    overlay.add_argument("--fps", type=float, default=None, help="output frame rate (default: the video's, divided by --step to keep real time)")
    overlay.add_argument("--point-radius", type=float, default=4.0, help="point radius in pixels (default 4)")
    add_range_arguments(overlay)
    overlay.set_defaults(func=_overlay)

    labels = sub.add_parser(
        "labels",
        help="convert labels between a TIFF stack and a folder of PNG masks",
        description="Convert label masks: .tif/.tiff output writes a compressed multi-page TIFF, "
        "any other output path a folder of numbered PNG masks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_LABELS_EXAMPLES,
    )
    labels.add_argument("input", help="label TIFF stack or folder of numbered PNG masks")
    labels.add_argument("--out", required=True, help="output .tif/.tiff file or folder")
    labels.set_defaults(func=_labels)


def _overlay(args: argparse.Namespace) -> int:
    from ..io.export import export_overlay_video

    for opt in ("labels", "points"):
        value = getattr(args, opt)
        if value is not None and not Path(value).exists():
            raise DatasetError(f"--{opt} {value}: not found")
    src = open_from_args(args.video, args)
    try:
        out = export_overlay_video(
            src,
            args.out,
            labels=args.labels,
            points=args.points,
            alpha=args.alpha,
            fps=args.fps,
            point_radius=args.point_radius,
            progress=TextProgress("overlay"),
        )
    finally:
        src.close()
    log.info("wrote %s", out)
    print(f"wrote {out}")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from ..io.export import open_labels, write_labels_tiff, write_png_masks

    src, out = Path(args.input), Path(args.out)
    if src.resolve() == out.resolve():
        raise DatasetError(f"{out}: output is the same as the input")
    from ..provenance import build_provenance, read_provenance

    stack = open_labels(src)
    try:  # the converted labels keep the input's provenance (video, frames, model)
        prov = build_provenance(base=read_provenance(src), result="labels", converted_from=str(src.absolute()))
        if out.suffix.lower() in (".tif", ".tiff"):
            write_labels_tiff(stack, out, progress=TextProgress("labels"), provenance=prov)
        else:
            write_png_masks(stack, out, progress=TextProgress("labels"), provenance=prov)
    finally:
        if hasattr(stack, "close"):
            stack.close()
    print(f"wrote {out}")
    return 0
