"""Evaluation in the layout of the paper's Tables 5/6: precision P, Dice D
and symmetric distance G per landmark (ridge / ligament / silhouette, the
paper's order) and their means, for the rows

* "initial training": the stage-1 checkpoint (``stage1_checkpoint``), raw;
* "fine-tuning": the evaluated (stage-2) checkpoint, raw;
* "post-processing": the same checkpoint followed by the post-processing.

Truth and prediction are compared at the ORIGINAL image resolution: curve
annotations are drawn ``eval_thickness`` px thick there, raw predictions are
resized with nearest neighbour, post-processed ones are drawn from their
polylines at ``eval_thickness``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ...errors import DatasetError
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from . import CLASS_NAMES, LIGAMENT, RIDGE, SILHOUETTE
from .data import find_samples, load_mask
from .metrics import MetricAccumulator
from .predict import LiverPredictor
from .readers import read_image

log = logging.getLogger(__name__)

ROWS = (("initial", "initial training"), ("tune", "fine-tuning"), ("post", "post-processing"))
TABLE_ORDER = (RIDGE, LIGAMENT, SILHOUETTE)  # paper's order


def _fmt(v: float) -> str:
    return " -- " if v != v else f"{v:.2f}"


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], d_max: float) -> str:
    """Text table: one line per row key present in ``results``."""
    names = [CLASS_NAMES[c] for c in TABLE_ORDER]
    head = (f"{'':18s} {'P (r/l/s)':16s} {'mean P':>6s}  {'D (r/l/s)':16s} {'mean D':>6s}  "
            f"{'G (r/l/s)':16s} {'mean G':>6s}")
    lines = [f"liver landmarks, G with d_max = {d_max:g} px; r/l/s = ridge / ligament / silhouette", head]
    for key, label in ROWS:
        if key not in results:
            continue
        r = results[key]
        cells = []
        for m in ("precision", "dice", "G"):
            cells.append("/".join(_fmt(r[n][m]) for n in names).ljust(16) + " " + _fmt(r["mean"][m]).rjust(6))
        lines.append(f"{label:18s} " + "  ".join(cells))
    return "\n".join(lines)


def evaluate_predictors(predictors: Mapping[str, tuple], data, config: Mapping[str, Any], *,
                        progress: Optional[ProgressCallback] = None,
                        cancel: Optional[CancelToken] = None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``predictors``: {row key: (LiverPredictor, postprocess?)}. Returns
    {row key: dataset metrics}."""
    samples = find_samples(data, config.get("dataset_format", "auto"))
    d_max = float(config.get("d_max", 10.0))
    thick = float(config.get("eval_thickness", 12.0))
    accs = {k: MetricAccumulator(d_max) for k in predictors}
    for i, sample in enumerate(samples):
        check_cancel(cancel)
        image = read_image(sample.image)
        gt = load_mask(sample, image.shape[:2], None, thick)
        for key, (pred, do_pp) in predictors.items():
            fp = pred.predict([image], postprocess_on=do_pp)[0]
            if do_pp:
                out = fp.result.dilated if fp.result.dilated is not None else fp.result.thin
            else:
                out = fp.raw_full
            accs[key].add(out, gt)
        report(progress, i + 1, len(samples), f"image {i + 1}/{len(samples)}")
    return {k: a.result() for k, a in accs.items()}


def flatten(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Dict[str, float]:
    return {f"{row}/{cls}/{m}": v for row, r in results.items() for cls, ms in r.items() for m, v in ms.items()}


def evaluate_method(model, data, config: Mapping[str, Any], *, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None) -> Dict[str, Any]:
    """``MethodSpec.evaluate``: the table rows for ``model`` (stage 2) and, if
    ``stage1_checkpoint`` is set, the stage-1 model. Returns flat metrics
    (``"post/mean/dice"``, ...) plus ``"table"`` (the text table)."""
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"liver evaluation data not found: {data}")
    cfg = dict(config)
    cfg["postprocess"] = True
    opts = dict(cfg)
    stage2 = LiverPredictor(model, opts, checkpoint=cfg.get("checkpoint"))
    predictors = {}
    if cfg.get("stage1_checkpoint"):
        stage1 = LiverPredictor.from_checkpoint(cfg["stage1_checkpoint"], device=str(stage2.device))
        predictors["initial"] = (stage1, False)
    predictors["tune"] = (stage2, False)
    predictors["post"] = (stage2, True)
    results = evaluate_predictors(predictors, data, cfg, progress=progress, cancel=cancel)
    table = format_table(results, float(cfg.get("d_max", 10.0)))
    log.info("\n%s", table)
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in flatten(results).items()}
    flat["table"] = table
    return flat
