"""Metrics of the P2ILF 2D landmark task, as used by the paper (sec. 4.2):
precision P, Dice D (eq. 3), the symmetric distance G (eq. 4), plus clDice.

All work on binary masks of one class (the caller draws prediction and truth
at the evaluation thickness, e.g. 12 px at 1920 x 1080). For G:

* C = ground-truth pixels, B = predicted pixels, I = all image pixels;
* Q = pixels within ``d_max`` of C (the tolerance region);
* FP = predicted pixels outside Q;  FN = truth pixels farther than ``d_max``
  from every predicted pixel;
* d_S(p, S) = Euclidean distance from p to the nearest pixel of S;

    G = (sum_{b in B∩Q} d_S(b, C\\FN) + sum_{c in C\\FN} d_S(c, B∩Q)) / (2 |C| d_max)
        + |FP| / (|I| - 2 |C| d_max) + |FN| / |C|

so G = 0 for a perfect prediction and G = 1 for an empty one. (The second
denominator is clamped to >= 1 for huge truth sets.) Distances come from
Euclidean distance transforms; ``symmetric_distance_bruteforce`` is the
pairwise definition used to test them.

A class absent from the truth gives NaN for every metric (excluded from the
means, as the challenge does).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping

import numpy as np
from scipy import ndimage as ndi

from . import CLASS_NAMES, LANDMARK_CLASSES

METRIC_NAMES = ("precision", "dice", "G", "cldice")


def precision(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not gt.any():
        return float("nan")
    n = pred.sum()
    return float((pred & gt).sum() / n) if n else 0.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not gt.any():
        return float("nan")
    return float(2.0 * (pred & gt).sum() / (pred.sum() + gt.sum()))


def _dist_to(mask: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest True pixel of ``mask`` (inf if none)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(~mask)


def symmetric_distance(pred: np.ndarray, gt: np.ndarray, d_max: float = 10.0) -> float:
    """G of paper eq. 4 (see the module docstring)."""
    b, c = pred.astype(bool), gt.astype(bool)
    n_c = int(c.sum())
    if n_c == 0:
        return float("nan")
    q = _dist_to(c) <= d_max
    fp = b & ~q
    bq = b & q
    fn = c & (_dist_to(b) > d_max)
    c_kept = c & ~fn
    term = 0.0
    # B∩Q and C\FN are empty together: a predicted pixel within d_max of C
    # makes its nearest truth pixel a non-FN, and vice versa
    if bq.any():
        term = float(_dist_to(c_kept)[bq].sum() + _dist_to(bq)[c_kept].sum())
    n_i = b.size
    return float(term / (2.0 * n_c * d_max) + fp.sum() / max(1.0, n_i - 2.0 * n_c * d_max) + fn.sum() / n_c)


def symmetric_distance_bruteforce(pred: np.ndarray, gt: np.ndarray, d_max: float = 10.0) -> float:
    """Eq. 4 from pairwise distances (O(|B| |C|)), for testing small images."""
    bp = np.argwhere(pred.astype(bool)).astype(float)
    cp = np.argwhere(gt.astype(bool)).astype(float)
    if len(cp) == 0:
        return float("nan")

    def dist(a, b):
        if len(a) == 0 or len(b) == 0:
            return np.full(len(a), np.inf)
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)

    in_q = dist(bp, cp) <= d_max
    fp = int((~in_q).sum())
    bq = bp[in_q]
    is_fn = dist(cp, bp) > d_max
    ck = cp[~is_fn]
    term = 0.0
    if len(bq) and len(ck):
        term = dist(bq, ck).sum() + dist(ck, bq).sum()
    n_i = pred.size
    return float(term / (2 * len(cp) * d_max) + fp / max(1.0, n_i - 2 * len(cp) * d_max) + is_fn.sum() / len(cp))


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centre-line Dice (Shit et al. 2021): harmonic mean of topology
    precision |S(P) ∩ G| / |S(P)| and sensitivity |S(G) ∩ P| / |S(G)|."""
    from skimage.morphology import skeletonize

    p, g = pred.astype(bool), gt.astype(bool)
    if not g.any():
        return float("nan")
    if not p.any():
        return 0.0
    sp, sg = skeletonize(p), skeletonize(g)
    tprec = (sp & g).sum() / max(1, sp.sum())
    tsens = (sg & p).sum() / max(1, sg.sum())
    return float(2 * tprec * tsens / (tprec + tsens)) if tprec + tsens > 0 else 0.0


def image_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, d_max: float = 10.0,
                  with_cldice: bool = True) -> Dict[str, Dict[str, float]]:
    """{class name: {precision, dice, G, cldice}} for one image, plus "mean"
    over the classes present in the truth."""
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and truth {gt_labels.shape} differ in shape")
    out: Dict[str, Dict[str, float]] = {}
    for cls in LANDMARK_CLASSES:
        p, g = pred_labels == cls, gt_labels == cls
        out[CLASS_NAMES[cls]] = {
            "precision": precision(p, g), "dice": dice(p, g), "G": symmetric_distance(p, g, d_max),
            "cldice": cldice(p, g) if with_cldice else float("nan"),
        }
    out["mean"] = _mean_over_classes(out)
    return out


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]
    return float(np.mean(vals)) if vals else float("nan")


def _mean_over_classes(per_class: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    names = [CLASS_NAMES[c] for c in LANDMARK_CLASSES]
    return {m: _nanmean(per_class[n][m] for n in names) for m in METRIC_NAMES}


def dataset_metrics(per_image: List[Mapping[str, Mapping[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per-class means over images (images without the class excluded), then
    the mean over classes."""
    out: Dict[str, Dict[str, float]] = {}
    for cls in LANDMARK_CLASSES:
        name = CLASS_NAMES[cls]
        out[name] = {m: _nanmean(img[name][m] for img in per_image) for m in METRIC_NAMES}
    out["mean"] = _mean_over_classes(out)
    return out


class MetricAccumulator:
    """Collects per-image metrics; ``result()`` gives dataset metrics."""

    def __init__(self, d_max: float = 10.0, with_cldice: bool = True) -> None:
        self.d_max = d_max
        self.with_cldice = with_cldice
        self.images: List[Dict[str, Dict[str, float]]] = []

    def add(self, pred_labels: np.ndarray, gt_labels: np.ndarray) -> Dict[str, Dict[str, float]]:
        m = image_metrics(pred_labels, gt_labels, self.d_max, self.with_cldice)
        self.images.append(m)
        return m

    def result(self) -> Dict[str, Dict[str, float]]:
        return dataset_metrics(self.images)
