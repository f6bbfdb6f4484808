"""``surgseg evaluate f2paseg``: per-class Dice and IoU in the layout of the
paper's Table 2, and frames per second, for F2PASeg and plain SAM2 on the
same prompts.

Each clip is segmented the way a user segments it: the streaming engine
gets an exact box for each class visible on frames 0, 10, 20, ... (from the
ground-truth masks; ``box_every``) and propagates forward from the first
prompted frame (then backward, when the first prompt is later than frame
0); the per-class logits merge into one label map per frame, compared with
the ground truth at the video's resolution on every annotated frame.

Scores: for each class, Dice and IoU on each frame where the class is in
the ground truth or in the prediction (a frame where both lack it says
nothing about the class), averaged over those frames of all clips;
unlabelled pixels (IGNORE) are left out. mDice and mIoU are the means over
classes that occur (in ground truth or prediction) at all. FPS: frames
segmented per second of wall time for prompting and propagation, reading
and decoding the frames and merging the label maps included; scoring left
out; the device is named.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...progress import CancelToken, ProgressCallback, check_cancel, report
from .classes import IGNORE, ClassSet
from .data import AnnotatedClip, add_box_prompts, box_prompts


def frame_scores(pred: np.ndarray, gt: np.ndarray, class_ids: Sequence[int]) -> Dict[int, tuple]:
    """{class: (dice, iou)} for the classes in ``gt`` or ``pred`` (label
    maps of one frame); IGNORE pixels of ``gt`` do not count."""
    valid = gt != IGNORE
    out = {}
    for c in class_ids:
        p, g = (pred == c) & valid, gt == c
        ps, gs = int(p.sum()), int(g.sum())
        if ps == 0 and gs == 0:
            continue
        inter = int((p & g).sum())
        out[int(c)] = (2.0 * inter / (ps + gs), inter / (ps + gs - inter))
    return out


def evaluate_clips(sam, clips: Sequence[AnnotatedClip], class_set: ClassSet, *, box_every: int = 10,
                   threshold: float = 0.0, max_frames: Optional[int] = None,
                   keep_recent_prompt_frames: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None,
                   on_labels: Optional[Callable[[str, int, np.ndarray], None]] = None) -> Dict[str, Any]:
    """Scores of one model on ``clips`` (see the module doc); ``on_labels(clip
    name, frame, label map)`` receives each predicted label map (to keep them)."""
    import torch

    from ...device import describe_device
    from ...sam2_engine import StreamingSAM2

    ids = list(class_set.ids)
    per_class: Dict[int, List[tuple]] = {c: [] for c in ids}
    frames_done, seconds, skipped = 0, 0.0, []
    sam.eval()
    for k, clip in enumerate(clips):
        check_cancel(cancel)
        n = len(clip) if max_frames is None else min(len(clip), int(max_frames))
        prompts = {t: b for t, b in box_prompts(clip, every=box_every, class_ids=ids).items() if t < n}
        if not prompts:
            skipped.append(clip.name)  # no class visible on any prompt frame: nothing to track
            continue
        engine = StreamingSAM2(sam, clip.frames, keep_recent_prompt_frames=keep_recent_prompt_frames)
        done: set = set()
        scoring = 0.0

        def sink(result, clip=clip, done=done):
            nonlocal scoring
            if result.frame_idx in done:
                return  # the start frame comes again in the backward pass
            labels = result.label_map(threshold)  # merging is part of segmenting
            if on_labels is not None:
                on_labels(clip.name, result.frame_idx, labels)
            t0 = time.perf_counter()
            done.add(result.frame_idx)
            gt = clip.mask(result.frame_idx)
            if gt is not None:
                for c, s in frame_scores(labels, gt, ids).items():
                    per_class[c].append(s)
            scoring += time.perf_counter() - t0

        if next(sam.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        add_box_prompts(engine, prompts)
        first = min(prompts)
        engine.propagate(sink, direction="both" if first > 0 else "forward", frame_range=(0, n - 1),
                         cancel=cancel)
        seconds += time.perf_counter() - start - scoring
        frames_done += len(done)
        # unpredicted annotated frames (none when prompts exist): background everywhere
        report(progress, k + 1, len(clips), clip.name)
    classes = {}
    for c in ids:
        s = per_class[c]
        classes[class_set.by_id(c).abbrev] = {
            "dice": float(np.mean([d for d, _ in s])) if s else float("nan"),
            "iou": float(np.mean([i for _, i in s])) if s else float("nan"),
            "frames": len(s),
        }
    present = [v for v in classes.values() if v["frames"]]
    device = next(sam.parameters()).device
    return {
        "mean_dice": float(np.mean([v["dice"] for v in present])) if present else float("nan"),
        "mean_iou": float(np.mean([v["iou"] for v in present])) if present else float("nan"),
        "classes": classes,
        "frames": frames_done,
        "seconds": seconds,
        "fps": frames_done / seconds if seconds > 0 else float("nan"),
        "device": describe_device(device),
        "model": getattr(sam, "surgseg_model_name", None),
        "keep_recent_prompt_frames": keep_recent_prompt_frames,
        "clips": len(clips) - len(skipped),
        "clips_without_prompts": skipped,
    }


def _num(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]], class_set: ClassSet) -> str:
    """The paper's Table 2 (mIoU, mean Dice, Dice per class) plus FPS, and
    IoU per class below it."""
    abbrevs = [c.abbrev for c in class_set.classes]
    head = "| Model | mIoU | Dice Mean | " + " | ".join(abbrevs) + " | FPS |"
    sep = "|---|" + "---:|" * (len(abbrevs) + 3)
    lines = ["Dice per class (the paper's Table 2):", "", head, sep]
    for name, r in rows.items():
        lines.append(f"| {name} | {_num(r['mean_iou'])} | {_num(r['mean_dice'])} | "
                     + " | ".join(_num(r["classes"][a]["dice"]) for a in abbrevs) + f" | {r['fps']:.2f} |")
    lines += ["", "IoU per class:", "", "| Model | " + " | ".join(abbrevs) + " |", "|---|" + "---:|" * len(abbrevs)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_num(r["classes"][a]["iou"]) for a in abbrevs) + " |")
    first = next(iter(rows.values()))
    lines += ["", f"{first['clips']} clips, {first['frames']} frames segmented per model; FPS on "
              f"{first['device']}, frame reading and decoding included; frames scored per class where the class "
              "is in the ground truth or the prediction."]
    return "\n".join(lines)


def evaluate_method(model, data, config: Mapping[str, Any], *, progress=None, cancel=None) -> Dict[str, Any]:
    """``surgseg evaluate f2paseg``: the checkpoint's F2PASeg model and
    (``compare_base``) plain SAM2 from the same base weights, on the same
    box prompts, on the clips in ``data`` (``dataset_format``; a PAS root's
    ``eval_split``)."""
    from ...sam2_engine.build import build_model
    from .spec import _random_init_ok, class_set_of
    from .train import read_clips

    cs = class_set_of(config)
    clips = read_clips(data, str(config.get("dataset_format") or "pas"), config.get("eval_split"), cs)
    opts = dict(class_set=cs, box_every=int(config.get("box_every") or 10),
                threshold=float(config.get("mask_threshold") or 0.0), max_frames=config.get("eval_max_frames"),
                progress=progress, cancel=cancel)
    sam = getattr(model, "sam", model)
    keep = int(config.get("keep_recent_prompt_frames") or 0)
    name = Path(str(config.get("checkpoint") or "fine-tuned")).name
    tuned = evaluate_clips(sam, clips, keep_recent_prompt_frames=keep, **opts)
    rows = {f"F2PASeg ({name})": tuned}
    out: Dict[str, Any] = {"f2paseg": tuned}
    if config.get("compare_base", True):
        weights = None if _random_init_ok(config) else config["base_weights"]
        size = config.get("image_size")
        plain = build_model(str(config["sam2_config"]), weights, device=next(sam.parameters()).device,
                            image_size=None if size in (None, "", 0) else int(size), seed=int(config.get("seed") or 0))
        plain_keep = int(config.get("plain_keep_recent_prompt_frames") or 0)
        scores = evaluate_clips(plain, clips, keep_recent_prompt_frames=plain_keep, **opts)
        label = weights or f"random-init {config['sam2_config']}"
        rows = {f"SAM2 ({label})": scores, **rows}
        out["sam2"] = scores
    out["markdown"] = markdown_table(rows, cs)  # the CLI prints it and writes it next to --out
    return out
