"""``surgseg predict tools``: tips and anchors of every frame of videos.

:func:`predict_source` is the one prediction path (CLI, Python, widget): it
slides the frame window over a frame range (each frame read once, 2k+1
frames in memory), runs the coarse network, prompts the mask prior provider
with the decoded points when the model's refinement uses a prior, runs the
refinement, and decodes at most ``max_tools`` tips and anchors per frame.

Files per input (atomic): ``<stem>_tool_landmarks.csv`` with columns
``video,frame,type,x,y,score`` (image pixels) and ``<stem>_tool_landmarks.json``
(the same rows plus the model's provenance).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ...atomic import atomic_write_text
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from . import LANDMARK_TYPES

PRED_COLUMNS = ("video", "frame", "type", "x", "y", "score")
PRED_FORMAT = "surgseg-tool-landmark-predictions"


def predict_source(model, source, config: Mapping[str, Any], *, start: int = 0, stop: Optional[int] = None,
                   provider=None, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None, keep_heatmaps: bool = False,
                   timings: Optional[Dict[str, float]] = None) -> List[Dict[str, Any]]:
    """Per frame ``{"frame", "tip": (N, 3), "anchor": (N, 3)}`` (x, y, score in
    image pixels), plus ``"heatmaps"`` (C, h, w) and ``"prior"`` when asked.
    ``timings``: seconds spent per stage (read, coarse, prior, refine,
    decode) are added to it (the benchmark's split)."""
    import time

    clock = {} if timings is None else timings
    sync = (lambda: torch.cuda.synchronize()) if torch.cuda.is_available() else (lambda: None)  # noqa: E731

    def tick(name, t0):
        sync()
        now = time.perf_counter()
        clock[name] = clock.get(name, 0.0) + now - t0
        return now

    from ...io import iter_windows
    from .data import ToolFrameDataset
    from .spec import decode_batch, needs_prior

    ds = ToolFrameDataset([], config, train=False)
    k = int(config.get("k", 2))
    use_prior = needs_prior(config) and model.refine is not None and model.refine.use_prior
    if use_prior and provider is None:
        from .prior import build_sam2_prior

        provider = build_sam2_prior(config, device=next(model.parameters()).device)
    device = next(model.parameters()).device
    n = len(source)
    stop = n if stop is None else stop
    out = []
    t0 = time.perf_counter()
    for t, win in iter_windows(source, k, start, stop):
        check_cancel(cancel)
        H, W = win.shape[1:3]
        clip = ds.resize_clip(win)[None].to(device)
        size = torch.tensor([[W, H]], dtype=torch.float32)
        rec: Dict[str, Any] = {"frame": t}
        t0 = tick("read", t0)
        with torch.no_grad():
            coarse = model.coarse(clip)
            heat = coarse
            t0 = tick("coarse", t0)
            if model.refine is not None:
                prior = None
                if use_prior:
                    pts = decode_batch(coarse, size, config)[0]
                    points = np.concatenate([pts[kind][:, :2] for kind in LANDMARK_TYPES], 0)
                    m = provider(win[k], points)
                    rec["prior"] = m
                    prior = torch.from_numpy(ds._resize_map(m))[None, None].to(device)
                    t0 = tick("prior", t0)
                heat, _ = model.refine(clip[:, k], coarse, prior)
                t0 = tick("refine", t0)
        dec = decode_batch(heat, size, config)[0]
        t0 = tick("decode", t0)
        rec.update(dec)
        if keep_heatmaps:
            rec["heatmaps"] = heat[0].float().cpu().numpy()
        out.append(rec)
        report(progress, t - start + 1, stop - start, f"frame {t + 1}/{n}")
    return out


def rows_of(video: str, results: Sequence[Mapping[str, Any]]) -> List[list]:
    rows = []
    for r in results:
        for kind in LANDMARK_TYPES:
            for x, y, s in np.asarray(r.get(kind, np.zeros((0, 3)))).reshape(-1, 3):
                rows.append([video, int(r["frame"]), kind, round(float(x), 3), round(float(y), 3), round(float(s), 4)])
    return rows


def write_predictions(out_dir, stem: str, video: str, results, provenance: Mapping[str, Any]) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = rows_of(video, results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PRED_COLUMNS)
    w.writerows(rows)
    csv_path = atomic_write_text(out_dir / f"{stem}_tool_landmarks.csv", buf.getvalue())
    obj = {"format": PRED_FORMAT, "version": 1, "provenance": dict(provenance),
           "predictions": [dict(zip(PRED_COLUMNS, r)) for r in rows]}
    json_path = atomic_write_text(out_dir / f"{stem}_tool_landmarks.json", json.dumps(obj, indent=1) + "\n")
    return [Path(csv_path), Path(json_path)]


def predict_inputs(model, inputs, out_dir, config: Mapping[str, Any], *, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> List[Path]:
    from ...io import open_video

    written: List[Path] = []
    provenance = {"checkpoint": config.get("checkpoint"), "stage": config.get("stage"),
                  "use_prior": config.get("use_prior"), "prior_sam2_weights": config.get("prior_sam2_weights"),
                  "threshold": config.get("threshold"), "max_tools": config.get("max_tools")}
    for path in inputs:
        path = Path(path)
        with open_video(path, cache_mb=0) as src:
            results = predict_source(model, src, config, progress=progress, cancel=cancel)
        written += write_predictions(out_dir, path.stem if path.is_file() else path.name, str(path), results,
                                     provenance)
    return written


__all__ = ["predict_source", "predict_inputs", "write_predictions", "PRED_COLUMNS"]
