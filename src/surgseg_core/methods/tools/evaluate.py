"""``surgseg evaluate tools``: the paper's tables on a dataset folder.

Rows: the checkpoint's own (its coarse network as "coarse", and its
refinement as "refine w/o prior", "refine + prior" or "refine + prior +
aux"; a direct-ablation checkpoint as "direct mask-aug."), plus the rows of
``compare_checkpoints``. Every row decodes at most ``max_tools`` tips and
anchors per frame and is matched within ``match_tolerance`` px (15) at the
original resolution. Mask priors of refinement rows come from the row's own
coarse predictions (non-oracle), through the same prior cache as training.

Returns flat metrics ``"<row>/<type>/<action>/<metric>"`` (precision,
recall, f1, l2, tp, fp, fn) and ``"table"``: the Table 3 layout (F1 and L2
per action, then overall P, R, F1, L2).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ...progress import CancelToken, ProgressCallback, check_cancel, report
from . import ACTIONS, LANDMARK_TYPES
from .matching import LandmarkEvaluator


def _rows_of(model, config: Mapping[str, Any]) -> List[Tuple[str, Any, Mapping[str, Any]]]:
    from .spec import row_name

    if model.refine is None:
        return [(row_name(config), model, config)]
    return [("coarse", model, {**config, "stage": "coarse"}), (row_name(config), model, config)]


def _final_heat(model, clip: torch.Tensor, config: Mapping[str, Any], prior: Optional[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        if str(config.get("stage")) != "refine":
            return model.coarse(clip)
        return model(clip, prior)["refined"]


def add_frame_predictions(ev: LandmarkEvaluator, sample, predicted: Mapping[str, np.ndarray]) -> None:
    """Match one frame's decoded landmarks (``{type: (N, 2|3) x, y[, score]}``
    in image pixels) with the sample's annotations."""
    for kind in LANDMARK_TYPES:
        truth_recs = [r for r in sample.records if r.point(kind) is not None]
        truth = np.asarray([r.point(kind) for r in truth_recs], np.float64).reshape(-1, 2)
        frame_action = None if sample.records else "none"
        if sample.records and len({r.action for r in sample.records}) == 1:
            frame_action = sample.records[0].action
        pred = np.asarray(predicted.get(kind, ()), np.float64)
        pred = pred.reshape(len(pred), -1) if pred.size else np.zeros((0, 2))
        ev.add_frame(kind, pred[:, :2], truth, [r.action for r in truth_recs], frame_action)


def evaluate_rows(rows: Sequence[Tuple[str, Any, Mapping[str, Any]]], samples, *,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                  provider=None) -> Dict[str, LandmarkEvaluator]:
    """One :class:`LandmarkEvaluator` per row over ``samples``."""
    from .data import ToolFrameDataset
    from .spec import decode_batch, needs_prior, prior_source

    results: Dict[str, LandmarkEvaluator] = {}
    total = len(rows) * len(samples)
    done = 0
    for name, model, cfg in rows:
        if name in results:
            continue
        device = next(model.parameters()).device
        priors = prior_source(cfg, [samples], coarse=model.coarse, provider=provider) if needs_prior(cfg) else None
        ds = ToolFrameDataset(samples, cfg, train=False, priors=priors)
        ev = results[name] = LandmarkEvaluator(tol=float(cfg.get("match_tolerance", 15.0)))
        try:
            for i, s in enumerate(samples):
                check_cancel(cancel)
                item = ds[i]
                prior = item["prior"][None].to(device) if "prior" in item else None
                heat = _final_heat(model, item["clip"][None].to(device), cfg, prior)
                add_frame_predictions(ev, s, decode_batch(heat, item["image_size"][None], cfg)[0])
                done += 1
                report(progress, done, total, f"{name}: frame {i + 1}/{len(samples)}")
        finally:
            ds.close()
    return results


def _fmt(v: float, pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def format_table(results: Mapping[str, LandmarkEvaluator], actions: Sequence[str] = ACTIONS) -> str:
    """The paper's Table 3 layout: Method, LM, per action F1 and L2, overall P R F1 L2."""
    res = {name: ev.results() for name, ev in results.items()}
    present = [a for a in actions if any(a in r.get(k, {}) for r in res.values() for k in LANDMARK_TYPES)]
    head = ["Method", "LM"] + [f"{a.capitalize()} {m}" for a in present for m in ("F1", "L2")] + \
        ["P", "R", "F1", "L2"]
    lines = []
    for name, r in res.items():
        for kind in LANDMARK_TYPES:
            by = r.get(kind, {})
            cells = [name, kind.capitalize()]
            for a in present:
                s = by.get(a, {})
                cells += [_fmt(s.get("f1", float("nan")), True), _fmt(s.get("l2", float("nan")), False)]
            o = by.get("overall", {})
            cells += [_fmt(o.get("precision", float("nan")), True), _fmt(o.get("recall", float("nan")), True),
                      _fmt(o.get("f1", float("nan")), True), _fmt(o.get("l2", float("nan")), False)]
            lines.append(cells)
    widths = [max(len(str(row[i])) for row in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    title = "Tool landmarks: P/R/F1 in %, L2 in px, one-to-one matching within the tolerance"
    return "\n".join([title, fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in lines])


def flat_metrics(results: Mapping[str, LandmarkEvaluator]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for name, ev in results.items():
        for kind, by in ev.results().items():
            for action, scores in by.items():
                for metric, v in scores.items():
                    out[f"{name}/{kind}/{action}/{metric}"] = float(v)
    return out


def evaluate_method(model, data, config: Mapping[str, Any], *, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    from ...training.inference import load_trained_model
    from .data import find_samples

    samples = find_samples(data, tuple(config.get("actions") or ACTIONS))
    rows = _rows_of(model, config)
    for ckpt in config.get("compare_checkpoints") or []:
        _, other, ocfg, _ = load_trained_model("tools", ckpt, {k: config[k] for k in (
            "device", "threshold", "nms_radius", "max_tools", "match_tolerance", "prior_cache",
            "prior_feature_cache") if k in config})
        rows += _rows_of(other, ocfg)
    results = evaluate_rows(rows, samples, progress=progress, cancel=cancel)
    out: Dict[str, Any] = flat_metrics(results)
    out["frames"] = float(len(samples))
    out["table"] = format_table(results, tuple(config.get("actions") or ACTIONS))
    return out


__all__ = ["add_frame_predictions", "evaluate_method", "evaluate_rows", "format_table", "flat_metrics"]
