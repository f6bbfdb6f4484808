"""The paper's evaluation (sec. 3.2): one-to-one matching of predicted and
true landmarks of the same type within a tolerance (15 px), per frame.

Matching is a Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
that first maximises the number of pairs within the tolerance and then
minimises their total distance (pairs beyond the tolerance cost more than
any set of valid pairs could save). Unmatched predictions are false
positives, unmatched truths false negatives. Precision, recall, F1 and the
mean L2 distance of matched pairs are accumulated per landmark type, per
action and overall.

Per-action bookkeeping: a matched pair and an unmatched truth count for the
truth's action; an unmatched prediction counts for the frame's action (the
action of its annotated tool(s); "mixed" if they differ, "none" on a frame
annotated without an active tool). "overall" counts everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TOLERANCE_PX = 15.0


def match_points(pred: np.ndarray, truth: np.ndarray, tol: float = TOLERANCE_PX
                 ) -> Tuple[List[Tuple[int, int]], np.ndarray]:
    """Pairs (i_pred, j_truth) within ``tol`` px and their distances."""
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred, np.float64).reshape(-1, 2)
    truth = np.asarray(truth, np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(truth) == 0:
        return [], np.zeros(0)
    d = np.linalg.norm(pred[:, None, :] - truth[None, :, :], axis=-1)
    ok = d <= tol
    # an invalid pair costs more than all valid pairs together: the assignment
    # first maximises the number of valid pairs, then minimises their distance
    big = float(d[ok].sum() + 1.0) * (min(len(pred), len(truth)) + 1) if ok.any() else 1.0
    cost = np.where(ok, d, big)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(i), int(j)) for i, j in zip(rows, cols) if ok[i, j]]
    return pairs, np.array([d[i, j] for i, j in pairs], np.float64)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    dist_sum: float = 0.0

    def add(self, other: "Counts") -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.dist_sum += other.dist_sum

    def scores(self) -> Dict[str, float]:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")
        if self.tp == 0:
            f1 = 0.0 if (self.fp or self.fn) else float("nan")
        else:
            f1 = 2 * p * r / (p + r)
        l2 = self.dist_sum / self.tp if self.tp else float("nan")
        return {"precision": p, "recall": r, "f1": f1, "l2": l2, "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass
class LandmarkEvaluator:
    """Accumulates frames; ``counts[type][action]`` -> :class:`Counts`."""

    tol: float = TOLERANCE_PX
    counts: Dict[str, Dict[str, Counts]] = field(default_factory=dict)
    frames: int = 0

    def _c(self, kind: str, action: str) -> Counts:
        return self.counts.setdefault(kind, {}).setdefault(action, Counts())

    def add_frame(self, kind: str, pred: np.ndarray, truth: np.ndarray, truth_actions: Sequence[str],
                  frame_action: Optional[str] = None) -> None:
        """One frame, one landmark type. ``truth_actions``: the action of each
        true point; ``frame_action``: where unmatched predictions count
        (default: the one action of the truths, "mixed" or "none")."""
        pred = np.asarray(pred, np.float64).reshape(-1, 2)
        truth = np.asarray(truth, np.float64).reshape(-1, 2)
        if len(truth_actions) != len(truth):
            raise ValueError("one action per true point")
        if frame_action is None:
            acts = set(truth_actions)
            frame_action = acts.pop() if len(acts) == 1 else ("mixed" if acts else "none")
        pairs, dists = match_points(pred, truth, self.tol)
        matched_p = {i for i, _ in pairs}
        matched_t = {j for _, j in pairs}
        for (i, j), dd in zip(pairs, dists):
            for a in (truth_actions[j], "overall"):
                c = self._c(kind, a)
                c.tp += 1
                c.dist_sum += float(dd)
        for j in range(len(truth)):
            if j not in matched_t:
                for a in (truth_actions[j], "overall"):
                    self._c(kind, a).fn += 1
        n_fp = len(pred) - len(matched_p)
        if n_fp:
            for a in (frame_action, "overall"):
                self._c(kind, a).fp += n_fp

    def results(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        return {kind: {a: c.scores() for a, c in by_action.items()} for kind, by_action in self.counts.items()}


__all__ = ["TOLERANCE_PX", "match_points", "Counts", "LandmarkEvaluator"]
