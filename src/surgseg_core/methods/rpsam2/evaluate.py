"""``surgseg evaluate rpsam2``: the paper's Table 1 protocol.

For each object, seed k = 0..9 draws one random pixel of the object (the
same pixel for plain SAM2 and RP-SAM2: ``numpy.random.default_rng([k,
frame index, object index])``); the single click is segmented by plain
SAM2 (the frozen base) and by RP-SAM2, masks are compared with the ground
truth at the frame's own resolution. For each seed the scores are averaged
over the objects (of a class, or all); the table gives, per class, the mean
and standard deviation of those 10 per-seed averages. "Avg." is the
paper's row: the mean over classes of the class means and of the class
standard deviations; "All objects" pools every object per seed.

mDSC in %; mHD95 in pixels of the frame: the 95th percentile of the
symmetric surface distances (both directions pooled, as medpy's ``hd95``),
from scipy's Euclidean distance transform. A prediction with no pixels
scores the frame diagonal (the worst distance possible) rather than being
left out, so a click shifted off the instrument counts against the method;
how many did is reported (``empty_predictions``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...progress import CancelToken, ProgressCallback, check_cancel, report

SEEDS = 10


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th percentile symmetric surface distance (pixels) of two bool masks;
    the image diagonal if exactly one is empty, 0 if both are."""
    from scipy.ndimage import distance_transform_edt

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return float(math.hypot(*pred.shape))
    sp, sg = _surface(pred), _surface(gt)
    d_to_g = distance_transform_edt(~sg)[sp]
    d_to_p = distance_transform_edt(~sp)[sg]
    return float(np.percentile(np.concatenate([d_to_g, d_to_p]), 95))


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, gt).sum() / denom)


def click_points(mask: np.ndarray, frame_index: int, object_index: int, seeds: int = SEEDS,
                 margin: float = 0.0) -> np.ndarray:
    """(seeds, 2) x, y: one uniformly random pixel of ``mask`` per seed (or,
    with ``margin`` > 0, of the pixels within ``margin`` of it)."""
    from .train import near_region

    ys, xs = np.nonzero(near_region(mask, margin))
    out = []
    for k in range(seeds):
        i = int(np.random.default_rng([k, frame_index, object_index]).integers(len(xs)))
        out.append((float(xs[i]), float(ys[i])))
    return np.asarray(out, np.float32)


@torch.no_grad()
def evaluate_frames(model, samples: Sequence[Any], *, seeds: int = SEEDS, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, click_margin: float = 0.0) -> Dict[str, Any]:
    """Per-seed scores of plain SAM2 and RP-SAM2 on ``samples``
    (``data.Sample``), then the Table-1 summary (see module doc).
    ``click_margin`` (pixels at the model's resolution; 0 = the paper's
    clicks inside the object) lets clicks fall beside the object too."""
    from ...sam2_engine.engine import preprocess_frame
    from ...sam2_engine.heads import encode_frames

    model.eval()
    device = next(model.shift.parameters()).device
    size = model.image_size
    # rows[method][class] -> list over objects of per-seed arrays
    rows: Dict[str, Dict[str, List[np.ndarray]]] = {"sam2": {}, "rpsam2": {}}
    empty = {"sam2": 0, "rpsam2": 0}
    inside = []
    for fi, sample in enumerate(samples):
        check_cancel(cancel)
        frame = sample.read_image()
        h, w = frame.shape[:2]
        objects = [(m, c) for m, c in sample.objects() if m.any()]
        if not objects:
            continue
        with torch.inference_mode():
            feats = encode_frames(model.sam, preprocess_frame(frame, size)[None].to(device))
            embed = model.image_embedding(feats)
            margin = float(click_margin) * max(h, w) / size  # in the frame's pixels
            pts = np.concatenate([click_points(m, fi, oi, seeds, margin) for oi, (m, _) in enumerate(objects)])
            scale = np.array([size / w, size / h], np.float32)
            coords = torch.from_numpy(pts * scale)[:, None, :].to(device)
            labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=device)
            outs = {}
            for method, refine in (("sam2", False), ("rpsam2", True)):
                out, used = model.segment(feats, coords, labels, refine=refine, image_embed=embed)
                up = F.interpolate(out.best_masks.float(), size=(h, w), mode="bilinear", align_corners=False)
                outs[method] = (up[:, 0] > 0).cpu().numpy()
                if refine:
                    moved = (used[:, 0].cpu().numpy() / scale).round().astype(int)
                    moved[:, 0] = moved[:, 0].clip(0, w - 1)
                    moved[:, 1] = moved[:, 1].clip(0, h - 1)
        for oi, (m, cls) in enumerate(objects):
            for method in outs:
                scores = np.array([[dice_score(p, m), hd95(p, m)] for p in outs[method][oi * seeds:(oi + 1) * seeds]])
                empty[method] += int(sum(not p.any() for p in outs[method][oi * seeds:(oi + 1) * seeds]))
                rows[method].setdefault(cls, []).append(scores)
            inside += [bool(m[y, x]) for x, y in moved[oi * seeds:(oi + 1) * seeds]]
        report(progress, fi + 1, len(samples), sample.name)
    return summarise(rows, empty, inside)


def _per_seed(objs: List[np.ndarray]) -> np.ndarray:
    """(seeds, 2): per seed, DSC and HD95 averaged over the objects."""
    return np.mean(np.stack(objs), axis=0)


def summarise(rows: Mapping[str, Mapping[str, List[np.ndarray]]], empty: Mapping[str, int],
              inside: Sequence[bool]) -> Dict[str, Any]:
    classes = sorted(set(rows["sam2"]) | set(rows["rpsam2"]))
    result: Dict[str, Any] = {"classes": {}, "objects": sum(len(v) for v in rows["sam2"].values()),
                              "empty_predictions": dict(empty),
                              "refined_inside": float(np.mean(inside)) if inside else float("nan")}
    for method in ("sam2", "rpsam2"):
        per_class = {}
        for cls in classes:
            seeds = _per_seed(rows[method][cls])
            per_class[cls] = {"dsc_mean": 100 * float(seeds[:, 0].mean()), "dsc_sd": 100 * float(seeds[:, 0].std(ddof=1)),
                              "hd95_mean": float(seeds[:, 1].mean()), "hd95_sd": float(seeds[:, 1].std(ddof=1)),
                              "objects": len(rows[method][cls])}
        if per_class:
            avg = {k: float(np.mean([v[k] for v in per_class.values()]))
                   for k in ("dsc_mean", "dsc_sd", "hd95_mean", "hd95_sd")}
            pooled = _per_seed([o for objs in rows[method].values() for o in objs])
            every = {"dsc_mean": 100 * float(pooled[:, 0].mean()), "dsc_sd": 100 * float(pooled[:, 0].std(ddof=1)),
                     "hd95_mean": float(pooled[:, 1].mean()), "hd95_sd": float(pooled[:, 1].std(ddof=1))}
        else:
            avg = every = {}
        result["classes"][method] = per_class
        result[method] = {"avg": avg, "all": every}
    result["table"] = format_table(result)
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """The paper's Table 1 layout: classes as rows, mDSC / mHD95 (mean +- sd
    over the 10 clicks) for SAM2 and RP-SAM2 side by side."""
    head = f"{'class':<24} {'SAM2 mDSC(%)':>15} {'SAM2 mHD95':>16} {'RP-SAM2 mDSC(%)':>16} {'RP-SAM2 mHD95':>16}"
    lines = [head, "-" * len(head)]

    def cells(r):
        if not r:
            return f"{'-':>15} {'-':>16}"
        return f"{r['dsc_mean']:>8.2f}±{r['dsc_sd']:<6.2f} {r['hd95_mean']:>8.2f}±{r['hd95_sd']:<7.2f}"

    classes = result["classes"]
    for cls in sorted(set(classes["sam2"]) | set(classes["rpsam2"])):
        lines.append(f"{cls[:24]:<24} {cells(classes['sam2'].get(cls))} {cells(classes['rpsam2'].get(cls))}")
    lines.append("-" * len(head))
    lines.append(f"{'Avg.':<24} {cells(result['sam2']['avg'])} {cells(result['rpsam2']['avg'])}")
    lines.append(f"{'All objects':<24} {cells(result['sam2']['all'])} {cells(result['rpsam2']['all'])}")
    lines.append(f"{result['objects']} objects x 10 single-click prompts; empty masks (scored at the diagonal): "
                 f"SAM2 {result['empty_predictions']['sam2']}, RP-SAM2 {result['empty_predictions']['rpsam2']}; "
                 f"refined clicks inside their object: {100 * result['refined_inside']:.1f} %")
    return "\n".join(lines)


def evaluate_method(model, data, config: Mapping[str, Any], *, progress=None, cancel=None) -> Dict[str, Any]:
    """``surgseg evaluate rpsam2 --data FOLDER``: read the folder with the
    configured reader and run :func:`evaluate_frames`."""
    from .data import read_samples

    samples = read_samples(data, str(config.get("data_format", "auto")), class_names=config.get("class_names"),
                           image_root=config.get("image_root"))
    limit = config.get("eval_max_frames")
    if limit:
        samples = samples[: int(limit)]
    return evaluate_frames(model, samples, seeds=int(config.get("eval_seeds", SEEDS)), progress=progress, cancel=cancel,
                           click_margin=float(config.get("click_margin") or 0.0))
