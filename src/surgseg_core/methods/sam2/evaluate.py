"""Video object segmentation scores, DAVIS-style, with the streaming engine.

Each sequence is tracked the way a user tracks it: one box per object on the
first frame (from its ground-truth mask), then ``StreamingSAM2.propagate``;
every later frame is compared with the ground truth at the video's
resolution. J is the region IoU, F the boundary F-measure of the DAVIS
benchmark (boundaries from scikit-image, matched within 0.8 % of the image
diagonal); a frame where object and prediction are both empty scores 1 (as
in DAVIS). The mean IoU per object counts only frames where the object or
the prediction is non-empty, so a model that predicts nothing scores 0 on
it rather than the share of frames the object is out of view.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...datasets.boxes import mask_box
from ...progress import CancelToken, ProgressCallback, check_cancel, report


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure (``davis2017-evaluation`` ``f_measure``)."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk
    from skimage.segmentation import find_boundaries

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(pred.shape))
    pb = find_boundaries(pred, mode="inner")
    gb = find_boundaries(gt, mode="inner")
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    selem = disk(int(radius))
    precision = float((pb & binary_dilation(gb, selem)).sum() / n_p)
    recall = float((gb & binary_dilation(pb, selem)).sum() / n_g)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


class _ImageFiles:
    """Frame source over a list of image files (read on access)."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(self.files[i]).convert("RGB"))


def _open_frames(seq):
    if isinstance(seq.frames, list):
        return _ImageFiles(seq.frames)
    from ...io import open_video

    return open_video(seq.frames, stop=len(seq.masks))


def track_sequence(sam, seq, *, max_frames: Optional[int] = None) -> Dict[int, Dict[str, List[float]]]:
    """Per object present on the first frame: J and F on every later frame."""
    from PIL import Image

    from ...sam2_engine import StreamingSAM2

    n = len(seq.masks) if max_frames is None else min(len(seq.masks), int(max_frames))
    first = np.asarray(Image.open(seq.masks[0]))
    ids = [int(i) for i in np.unique(first) if i]
    scores: Dict[int, Dict[str, List[float]]] = {i: {"J": [], "F": [], "IoU": []} for i in ids}
    if not ids or n < 2:
        return scores
    frames = _open_frames(seq)
    try:
        engine = StreamingSAM2(sam, frames)
        for obj in ids:
            engine.add_box(0, obj, mask_box(first, obj))

        def sink(result):
            t = result.frame_idx
            if t == 0:
                return
            gt = np.asarray(Image.open(seq.masks[t]))
            for obj in ids:
                pred = result.object_mask(obj) > 0
                scores[obj]["J"].append(jaccard(pred, gt == obj))
                if pred.any() or (gt == obj).any():
                    scores[obj]["IoU"].append(scores[obj]["J"][-1])
                scores[obj]["F"].append(boundary_f(pred, gt == obj))

        engine.propagate(sink, direction="forward", frame_range=(0, n - 1))
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    return scores


def evaluate_sam(sam, sequences, *, max_frames: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    """J, F, J&F (means over objects of their per-frame means) and the mean
    IoU per object of ``sam`` on ``sequences``."""
    import torch

    per_object: Dict[str, Dict[str, float]] = {}
    sam.eval()
    with torch.no_grad():
        for k, seq in enumerate(sequences):
            check_cancel(cancel)
            for obj, s in track_sequence(sam, seq, max_frames=max_frames).items():
                if s["J"]:
                    per_object[f"{seq.name}:{obj}"] = {
                        "J": float(np.mean(s["J"])), "F": float(np.mean(s["F"])), "frames": len(s["J"]),
                        "iou": float(np.mean(s["IoU"])) if s["IoU"] else 1.0,
                    }
            report(progress, k + 1, len(sequences), seq.name)
    if not per_object:
        return {"objects": 0, "J": float("nan"), "F": float("nan"), "J&F": float("nan"), "mean_iou": float("nan"),
                "per_object": {}}
    J = float(np.mean([v["J"] for v in per_object.values()]))
    F = float(np.mean([v["F"] for v in per_object.values()]))
    iou = float(np.mean([v["iou"] for v in per_object.values()]))
    return {"objects": len(per_object), "J": J, "F": F, "J&F": (J + F) / 2, "mean_iou": iou,
            "per_object": per_object}


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    head = f"{'model':<34} {'objects':>7} {'J&F':>7} {'J (IoU)':>8} {'F':>7} {'mean IoU':>9}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name[:34]:<34} {r['objects']:>7d} {r['J&F']:>7.3f} {r['J']:>8.3f} {r['F']:>7.3f} "
                     f"{r['mean_iou']:>9.3f}")
    return "\n".join(lines)


def evaluate_method(model, data, config: Mapping[str, Any], *, progress=None, cancel=None) -> Dict[str, Any]:
    """``surgseg evaluate sam2``: the fine-tuned model and (``compare_base``)
    the plain model it started from, side by side, on the sequences in ``data``."""
    from .data import find_sequences
    from .spec import build_sam

    seqs = find_sequences(data)
    max_frames = config.get("eval_max_frames")
    tuned = evaluate_sam(model.sam, seqs, max_frames=max_frames, progress=progress, cancel=cancel)
    name = Path(str(config.get("checkpoint") or "fine-tuned")).name
    rows = {f"fine-tuned ({name})": tuned}
    out: Dict[str, Any] = {"fine_tuned": tuned}
    if config.get("compare_base", True):
        base = build_sam(config).to(next(model.parameters()).device)
        label = config.get("base_weights") or f"random-init {config.get('sam2_config')}"
        plain = evaluate_sam(base, seqs, max_frames=max_frames, progress=progress, cancel=cancel)
        rows = {f"plain ({label})": plain, **rows}
        out["plain"] = plain
    out["table"] = format_table(rows)
    return out


def prompt_following(sam, sequences, *, max_frames: Optional[int] = None, min_area: int = 20,
                     frame_step: int = 1) -> Dict[str, Any]:
    """Does the model segment what its prompt points at? On every frame
    (``frame_step`` apart) where at least two objects are visible (``min_area``
    pixels each), one box per visible object (from its ground-truth mask),
    decoded without memory (``sam2_engine.heads.decode_masks``); the mask is
    compared, at the video's resolution, with the prompted object and with
    the best-matching other visible object.

    Returns ``iou_prompted`` and ``iou_other`` (means over prompts),
    ``preferred`` (share of prompts whose mask overlaps the prompted object
    more than any other), ``prompts`` and ``frames``. A model that ignores its
    prompts gives about equal IoUs and ``preferred`` near 1 / objects."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from ...sam2_engine.engine import preprocess_frame
    from ...sam2_engine.heads import decode_masks, encode_frames

    size = int(sam.image_size)
    own, other, pref, n_frames = [], [], [], 0
    was_training = sam.training
    sam.eval()
    try:
        with torch.inference_mode():
            for seq in sequences:
                n = len(seq.masks) if max_frames is None else min(len(seq.masks), int(max_frames))
                frames = None
                try:
                    for t in range(0, n, max(1, int(frame_step))):
                        gt = np.asarray(Image.open(seq.masks[t]))
                        ids, counts = np.unique(gt, return_counts=True)
                        ids = [int(i) for i, c in zip(ids, counts) if i and c >= min_area]
                        if len(ids) < 2:
                            continue
                        if frames is None:
                            frames = _open_frames(seq)
                        h, w = gt.shape
                        feats = encode_frames(sam, preprocess_frame(np.asarray(frames[t]), size)[None])
                        boxes = []
                        for i in ids:  # the pixels' extent (inclusive max + 1) in model coordinates
                            x0, y0, x1, y1 = mask_box(gt, i)
                            boxes.append([x0 * size / w, y0 * size / h, (x1 + 1) * size / w, (y1 + 1) * size / h])
                        out = decode_masks(sam, feats, boxes=torch.tensor(boxes, dtype=torch.float32))
                        masks = F.interpolate(out.best_masks.float(), size=(h, w), mode="bilinear",
                                              align_corners=False)[:, 0] > 0
                        masks = masks.numpy()
                        for k, i in enumerate(ids):
                            mine = jaccard(masks[k], gt == i)
                            best_other = max(jaccard(masks[k], gt == j) for j in ids if j != i)
                            own.append(mine)
                            other.append(best_other)
                            pref.append(float(mine > best_other))
                        n_frames += 1
                finally:
                    close = getattr(frames, "close", None)
                    if close is not None:
                        close()
    finally:
        sam.train(was_training)
    if not own:
        return {"frames": 0, "prompts": 0, "iou_prompted": float("nan"), "iou_other": float("nan"),
                "preferred": float("nan")}
    return {"frames": n_frames, "prompts": len(own), "iou_prompted": float(np.mean(own)),
            "iou_other": float(np.mean(other)), "preferred": float(np.mean(pref))}
