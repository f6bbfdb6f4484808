"""``surgseg track``: SAM2 video object tracking from clicks or boxes.

Same code path as the "Track with SAM2" napari widget
(:func:`surgseg_core.sam2_engine.track.track_video`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, VideoError
from ..precision_names import INFERENCE_PRECISION_HELP, INFERENCE_PRECISIONS
from ..progress import TextProgress

log = logging.getLogger(__name__)

_EXAMPLES = """\
examples:
  # one box around the instrument on frame 0, tracked forward and backward:
  surgseg track clip.mp4 --box 0 120 80 260 200 --out masks/ --checkpoint sam2.1_hiera_tiny
  # two objects, each from a box on a different frame, frames 100..400 only:
  surgseg track clip.mp4 --box 120 40 30 200 110 --obj-id 1 --box 150 210 60 300 180 --obj-id 2 \\
      --range 100 400 --out masks/ --model sam2.1_hiera_small --checkpoint sam2.1_hiera_small
  # clicks saved from napari (Points layer -> CSV) with fine-tuned weights:
  surgseg track clip.mp4 --points prompts.csv --model my_finetuned_sam2 --out masks/
  # pipeline test without any weights (random SAM2, masks are meaningless):
  surgseg track clip.mp4 --box 0 10 10 60 50 --model surgseg_tiny --out /tmp/masks

POINTS.csv: columns frame,x,y (video pixels) plus optional obj_id (default 1) and
positive (1/true = object, 0/false = background; default 1), e.g.
  frame,x,y,obj_id,positive
  0,140,92,1,1
  0,60,40,1,0
Output: OUT/000000.png ... (label value = object id; --per-object: OUT/obj_<id>/, 0/1)
and OUT/provenance.json (model, weights hash, prompts, versions). Without --checkpoint
(or registered weights as --model) SAM2's weights are RANDOM and the masks say nothing.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "track",
        help="track objects through a video with SAM2 from clicks or boxes",
        description="Segment objects on prompted frames and track them through the video with SAM2, "
        "writing one PNG label map per frame. Frames are read lazily and memory stays flat.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXAMPLES,
    )
    p.add_argument("video", help="video file, TIFF stack or folder of numbered frames")
    p.add_argument("--points", metavar="POINTS.csv", help="click prompts: CSV frame,x,y[,obj_id][,positive]")
    p.add_argument("--box", nargs=5, type=float, action="append", metavar=("FRAME", "X0", "Y0", "X1", "Y1"),
                   help="box prompt on a frame (repeatable)")
    p.add_argument("--obj-id", type=int, action="append", dest="obj_ids", metavar="N",
                   help="object id of the preceding --box (repeat once per box; default 1, 2, ... in order)")
    p.add_argument("--out", required=True, help="output folder for the PNG label maps")
    p.add_argument("--model", default="surgseg_tiny",
                   help="SAM2 config or official name (sam2.1_hiera_tiny, ...) or registered weights name "
                   "(default surgseg_tiny: a tiny test architecture)")
    p.add_argument("--checkpoint", help="weights file or registered/official weights name (default: none = random)")
    p.add_argument("--direction", choices=["both", "forward", "backward"], default="both",
                   help="propagate from the earliest prompt forward, backward or both (default both)")
    p.add_argument("--range", nargs=2, type=int, metavar=("A", "B"), dest="frame_range",
                   help="track only frames A..B (inclusive, 0-based)")
    p.add_argument("--image-size", type=int, help="processing resolution (multiple of 32; default: the model's)")
    p.add_argument("--per-object", action="store_true", help="one 0/1 PNG folder per object instead of one label map")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the masks of an earlier run in --out (default: refuse a folder that holds masks)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", help=INFERENCE_PRECISION_HELP)
    p.add_argument("--compile", action="store_true", dest="compile_image_encoder",
                   help="run the image encoder through torch.compile, as SAM2's vos_optimized predictor (for GPUs: "
                   "minutes to compile, then faster frames; no gain measured on CPUs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_track)

    r = subparsers.add_parser(
        "repropagate",
        help="track on with SAM2 from a corrected frame of a PNG mask folder",
        description="Make the masks of a corrected frame SAM2 mask prompts and propagate them through the "
        "video into the same PNG folder (the 'Re-propagate from this frame' button of the napari widget).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_REPROPAGATE_EXAMPLES,
    )
    r.add_argument("video", help="video file, TIFF stack or folder of numbered frames")
    r.add_argument("masks", help="folder of PNG label maps (000000.png, ...), updated in place")
    r.add_argument("--frame", type=int, required=True, help="the corrected frame to propagate from (0-based)")
    r.add_argument("--direction", choices=["forward", "backward", "both"], default="forward",
                   help="frames after (forward), before (backward) or both (default forward)")
    r.add_argument("--validated", nargs=2, type=int, action="append", metavar=("A", "B"), default=[],
                   help="checked frames A..B (inclusive): never rewritten, used as prompts (repeatable)")
    r.add_argument("--obj-id", type=int, action="append", dest="obj_ids", metavar="N",
                   help="object(s) to propagate (default: those on --frame; one absent there is removed)")
    r.add_argument("--range", nargs=2, type=int, metavar=("A", "B"), dest="frame_range",
                   help="limit to frames A..B (inclusive)")
    r.add_argument("--model", default="surgseg_tiny", help="as for 'surgseg track'")
    r.add_argument("--checkpoint", help="weights file or registered/official weights name (default: none = random)")
    r.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    r.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto", help=INFERENCE_PRECISION_HELP)
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=_repropagate)


_REPROPAGATE_EXAMPLES = """\
examples:
  # after correcting masks/000120.png by hand, track on from it to the end:
  surgseg repropagate clip.mp4 masks/ --frame 120 --checkpoint sam2.1_hiera_tiny
  # backwards to frame 0, keeping the checked frames 40..60 (used as prompts):
  surgseg repropagate clip.mp4 masks/ --frame 120 --direction backward --validated 40 60 \\
      --checkpoint sam2.1_hiera_tiny

MASKS is a folder of PNG label maps as 'surgseg track --out' writes (000123.png, value =
object id; a missing frame is empty). The masks of --frame become SAM2 mask prompts for
their objects; frames on the other side, --frame itself and --validated frames are not
rewritten. The run's provenance is appended to MASKS/provenance.json ("repropagations").
"""


def _box_prompts(boxes, obj_ids):
    boxes = boxes or []
    if obj_ids and len(obj_ids) != len(boxes):
        raise ConfigError(f"{len(obj_ids)} --obj-id for {len(boxes)} --box: give one --obj-id per --box, or none")
    prompts = []
    for i, (frame, x0, y0, x1, y1) in enumerate(boxes):
        if frame != int(frame):
            raise ConfigError(f"--box {i + 1}: FRAME must be a whole number, got {frame:g}")
        prompts.append({"frame": int(frame), "obj_id": obj_ids[i] if obj_ids else i + 1, "box": [x0, y0, x1, y1]})
    return prompts


def _points_prompts(path: str):
    from ..io.export import read_points_csv
    from ..sam2_engine.track import prompts_from_points_table

    table = read_points_csv(path)
    if table.data.ndim != 2 or table.data.shape[1] != 3:
        raise ConfigError(f"{path}: needs a 'frame' column (columns frame,x,y[,obj_id][,positive])")
    try:
        return prompts_from_points_table(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _track(args: argparse.Namespace) -> int:
    from ..io import open_video
    from ..sam2_engine.track import track_video

    if args.obj_ids and not args.box:
        raise ConfigError("--obj-id belongs to a --box; for clicks put an obj_id column in the points CSV")
    if not Path(args.video).exists():
        raise VideoError(f"video not found: {args.video}")
    prompts = _box_prompts(args.box, args.obj_ids)
    if args.points:
        prompts += _points_prompts(args.points)
    if not prompts:
        raise ConfigError("no prompts: give --box FRAME X0 Y0 X1 Y1 and/or --points POINTS.csv (with at least one row)")
    video = open_video(args.video)
    try:
        summary = track_video(
            video,
            prompts,
            model=args.model,
            checkpoint=args.checkpoint,
            image_size=args.image_size,
            direction=args.direction,
            frame_range=tuple(args.frame_range) if args.frame_range else None,
            out_dir=args.out,
            per_object=args.per_object,
            overwrite=args.overwrite,
            device=args.device,
            precision=args.precision,
            compile_image_encoder=args.compile_image_encoder,
            progress=TextProgress("tracking"),
        )
    finally:
        video.close()
    if args.json:
        json.dump({k: v for k, v in summary.items() if k != "provenance"}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"wrote {summary['frames_written']} label map(s) for object(s) {summary['obj_ids']} to {summary['out_dir']}")
        if summary["random_weights"]:
            print("WARNING: random SAM2 weights (no --checkpoint): the masks are not segmentations", file=sys.stderr)
    return 0


def _repropagate(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_text
    from ..io import open_video
    from ..sam2_engine.refine import PngLabelStack, repropagate

    if not Path(args.video).exists():
        raise VideoError(f"video not found: {args.video}")
    video = open_video(args.video)
    try:
        height, width = video[0].shape[:2]
        masks = PngLabelStack(args.masks, len(video), height, width)
        summary = repropagate(
            video, masks, args.frame, direction=args.direction, validated=args.validated, obj_ids=args.obj_ids,
            frame_range=tuple(args.frame_range) if args.frame_range else None, model=args.model,
            checkpoint=args.checkpoint, device=args.device, precision=args.precision,
            progress=TextProgress("re-propagating"),
        )
    finally:
        video.close()
    prov_path = Path(args.masks) / "provenance.json"
    try:
        prov = json.loads(prov_path.read_text(encoding="utf-8")) if prov_path.is_file() else {}
    except json.JSONDecodeError:
        prov = {}
    prov.setdefault("repropagations", []).append(summary["provenance"])
    atomic_write_text(prov_path, json.dumps(prov, indent=2, default=str))
    if args.json:
        json.dump({k: v for k, v in summary.items() if k != "provenance"}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"re-propagated object(s) {summary['obj_ids']} from frame {summary['frame']}: "
              f"{len(summary['frames_changed'])} label map(s) changed in {args.masks}")
        if summary["random_weights"]:
            print("WARNING: random SAM2 weights (no --checkpoint): the masks are not segmentations", file=sys.stderr)
    return 0
