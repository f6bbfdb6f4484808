"""``surgseg predict tools``: tips and anchors of every frame of videos.

:func:`predict_source` is the one prediction path (CLI, Python, napari
widget): it slides the frame window over a frame range (each frame read
once, 2k+1 frames in memory), runs the coarse network, prompts the mask
prior provider with the decoded points when the model's refinement uses a
prior, runs the refinement, and decodes at most ``max_tools`` tips and
anchors per frame. A ``sink`` gets each frame's record (heatmaps and prior
included) as soon as it is ready; :class:`StackSink` writes them into
per-frame stacks (on-disk memory maps for a whole video), so nothing
grows with the video's length.

Tips and anchors are paired into tools (:func:`pair_tools`: nearest
tip-anchor pairs, ids 1, 2, ... per frame).

Files per input (atomic): ``<stem>_tool_landmarks.csv`` with columns
``video,frame,type,tool,x,y,score`` (image pixels) and
``<stem>_tool_landmarks.json`` (the same rows plus the model's provenance).
:func:`load_tools_model` gives the model and its config from a checkpoint or
registered weights, or a random tiny one (testing only).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ...atomic import atomic_write_text
from ...errors import SurgsegError
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from . import LANDMARK_TYPES

PRED_COLUMNS = ("video", "frame", "type", "tool", "x", "y", "score")
PRED_FORMAT = "surgseg-tool-landmark-predictions"

#: a random-init model small enough for tests (the refinement stage with a
#: SAM2 prior, so every stage runs); its heatmaps mean nothing
TINY_RANDOM_CONFIG: Dict[str, Any] = {
    "stage": "refine", "use_prior": True, "aux_weight": 0.0, "k": 1, "input_width": 64, "input_height": 48,
    "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": [32, 16, 8],
    "prior_sam2_config": "surgseg_tiny", "prior_sam2_weights": None}


def uses_prior(model, config: Mapping[str, Any]) -> bool:
    """Whether ``model`` with ``config`` prompts the mask prior provider."""
    from .spec import needs_prior

    return needs_prior(config) and model.refine is not None and model.refine.use_prior


def build_provider(model, config: Mapping[str, Any]):
    """The SAM2 mask prior provider of ``config`` on the model's device (None
    when the model uses no prior)."""
    if not uses_prior(model, config):
        return None
    from .prior import build_sam2_prior

    return build_sam2_prior(config, device=next(model.parameters()).device)


def predict_source(model, source, config: Mapping[str, Any], *, start: int = 0, stop: Optional[int] = None,
                   provider=None, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None, keep_heatmaps: bool = False,
                   timings: Optional[Dict[str, float]] = None,
                   sink: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
    """Per frame ``{"frame", "tip": (N, 3), "anchor": (N, 3)}`` (x, y, score in
    image pixels), plus ``"heatmaps"`` (C, h, w, model resolution) and
    ``"prior"`` ((H, W) 0..1, when the model uses one) with ``keep_heatmaps``.
    ``sink(record)``: called per frame with the record including heatmaps
    and prior (they are dropped afterwards unless ``keep_heatmaps``), so a
    cancel (``Cancelled`` raised) keeps what the sink got.
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
    from .spec import decode_batch

    ds = ToolFrameDataset([], config, train=False)
    k = int(config.get("k", 2))
    use_prior = uses_prior(model, config)
    if use_prior and provider is None:
        provider = build_provider(model, config)
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
        if keep_heatmaps or sink is not None:
            rec["heatmaps"] = heat[0].float().cpu().numpy()
        if sink is not None:
            sink(rec)
        if not keep_heatmaps:  # a whole video's priors and heatmaps never pile up here
            rec.pop("heatmaps", None)
            rec.pop("prior", None)
        out.append(rec)
        report(progress, t - start + 1, stop - start, f"frame {t + 1}/{n}")
    return out


class StackSink:
    """A ``sink`` of :func:`predict_source` that writes each frame's heatmaps
    into ``heatmaps`` (one (T, h, w) uint8 stack per landmark type, 0..255 =
    0..1; heatmap values outside 0..1 are clipped) and its mask prior
    (>= 0.5) into ``prior`` ((T, H, W) labels, value ``prior_label``),
    indexed by frame, and keeps the decoded points (``records``)."""

    def __init__(self, heatmaps: Sequence[Any] = (), prior: Any = None, prior_label: int = 1) -> None:
        self.heatmaps, self.prior, self.prior_label = list(heatmaps), prior, int(prior_label)
        self.records: List[Dict[str, Any]] = []

    def __call__(self, rec: Dict[str, Any]) -> None:
        t = int(rec["frame"])
        heat = rec.get("heatmaps")
        for c, stack in enumerate(self.heatmaps):
            stack[t] = np.rint(np.clip(heat[c], 0.0, 1.0) * 255.0).astype(np.uint8)
        if self.prior is not None and rec.get("prior") is not None:
            self.prior[t] = (np.asarray(rec["prior"]) >= 0.5).astype(self.prior.dtype) * self.prior_label
        self.records.append({k: v for k, v in rec.items() if k not in ("heatmaps", "prior")})


def pair_tools(tips: np.ndarray, anchors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Tool ids (1, 2, ...) of a frame's tips and anchors: the nearest
    tip-anchor pairs (one-to-one, Hungarian on distance) share an id, in the
    order of the tips' scores; landmarks left over get ids of their own."""
    from scipy.optimize import linear_sum_assignment

    tips, anchors = np.asarray(tips).reshape(-1, 3), np.asarray(anchors).reshape(-1, 3)
    tip_ids = np.arange(1, len(tips) + 1)
    anchor_ids = np.zeros(len(anchors), int)
    if len(tips) and len(anchors):
        cost = np.linalg.norm(tips[:, None, :2] - anchors[None, :, :2], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        anchor_ids[cols] = tip_ids[rows]
    free = anchor_ids == 0
    anchor_ids[free] = len(tips) + 1 + np.arange(int(free.sum()))
    return tip_ids, anchor_ids


def rows_of(video: str, results: Sequence[Mapping[str, Any]]) -> List[list]:
    """``[video, frame, type, tool, x, y, score]`` rows of predicted records."""
    rows = []
    for r in results:
        pts = {kind: np.asarray(r.get(kind, np.zeros((0, 3)))).reshape(-1, 3) for kind in LANDMARK_TYPES}
        ids = dict(zip(LANDMARK_TYPES, pair_tools(pts["tip"], pts["anchor"])))
        for kind in LANDMARK_TYPES:
            for (x, y, s), tool in zip(pts[kind], ids[kind]):
                rows.append([video, int(r["frame"]), kind, int(tool), round(float(x), 3), round(float(y), 3),
                             round(float(s), 4)])
    return rows


def write_prediction_file(path, video: str, rows: Sequence[Sequence[Any]], provenance: Mapping[str, Any]) -> Path:
    """``rows`` (:data:`PRED_COLUMNS`, ``video`` first) as ``.csv`` or
    ``.json`` (by suffix), atomically; ``provenance`` in the JSON, next to
    a CSV in ``<file>.provenance.json``."""
    path = Path(path)
    rows = [[video, *r[1:]] for r in rows]
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(PRED_COLUMNS)
        w.writerows(rows)
        written = Path(atomic_write_text(path, buf.getvalue()))
        from ...provenance import write_sidecar

        write_sidecar(written, provenance)
        return written
    if path.suffix.lower() == ".json":
        obj = {"format": PRED_FORMAT, "version": 1, "provenance": dict(provenance),
               "predictions": [dict(zip(PRED_COLUMNS, r)) for r in rows]}
        return Path(atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n"))
    raise SurgsegError(f"{path}: tool landmarks are written as .csv or .json")


def write_predictions(out_dir, stem: str, video: str, results, provenance: Mapping[str, Any]) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = rows_of(video, results)
    return [write_prediction_file(out_dir / f"{stem}_tool_landmarks.{ext}", video, rows, provenance)
            for ext in ("csv", "json")]


def model_config(weights: Optional[str]) -> Dict[str, Any]:
    """The config a model of ``weights`` (a checkpoint file, registered
    weights name, or None for the random tiny model) runs with, read without
    loading its tensors (memory-mapped): input size and stage are known
    before the model is loaded (e.g. to size heatmap stacks)."""
    from ...config import merge_config
    from .spec import DEFAULT_CONFIG

    if not weights:
        return merge_config(DEFAULT_CONFIG, TINY_RANDOM_CONFIG)
    from ...training.inference import resolve_checkpoint
    from ...weights.state_dict import checkpoint_fields

    path, registered = resolve_checkpoint(weights, "tools")
    return merge_config(DEFAULT_CONFIG, checkpoint_fields(path).get("config"), registered)


def load_tools_model(weights: Optional[str], *, device: Optional[str] = None,
                     config: Optional[Mapping[str, Any]] = None, seed: int = 0):
    """``(model in eval mode, config, mask prior provider or None)`` from a
    checkpoint file or registered weights name; ``weights`` None: a RANDOM
    tiny model (:data:`TINY_RANDOM_CONFIG`, testing only;
    ``config["random_weights"]`` is True)."""
    if weights:
        from ...training.inference import load_trained_model

        _, model, cfg, _ = load_trained_model("tools", weights, config, device)
        cfg["random_weights"] = False
    else:
        from ...config import merge_config
        from ...device import resolve_device
        from .model import build_from_config
        from .spec import DEFAULT_CONFIG

        cfg = merge_config(DEFAULT_CONFIG, TINY_RANDOM_CONFIG, config,
                           {"seed": int(seed), "checkpoint": None, "random_weights": True})
        torch.manual_seed(int(seed))
        model = build_from_config(cfg).to(resolve_device(device or "auto")).eval()
    return model, cfg, build_provider(model, cfg)


def predict_inputs(model, inputs, out_dir, config: Mapping[str, Any], *, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None, provider=None) -> List[Path]:
    from ...io import open_video

    if provider is None:
        provider = build_provider(model, config)  # once for all inputs

    written: List[Path] = []
    provenance = {"checkpoint": config.get("checkpoint"), "stage": config.get("stage"),
                  "use_prior": config.get("use_prior"), "prior_sam2_weights": config.get("prior_sam2_weights"),
                  "threshold": config.get("threshold"), "max_tools": config.get("max_tools")}
    from ...provenance import build_provenance, file_sha256, source_fields

    ckpt = config.get("checkpoint")
    identity = {"name": "tools", "variant": config.get("stage"), "checkpoint": ckpt,
                "checkpoint_sha256": file_sha256(ckpt) if ckpt and Path(str(ckpt)).is_file() else None}
    for path in inputs:
        path = Path(path)
        with open_video(path, cache_mb=0) as src:
            results = predict_source(model, src, config, progress=progress, cancel=cancel, provider=provider)
            prov = build_provenance(base=provenance, result="prediction:tools", model=identity,
                                    **source_fields(src, [int(r["frame"]) for r in results], path=path))
        written += write_predictions(out_dir, path.stem if path.is_file() else path.name, str(path), results, prov)
    return written


__all__ = ["predict_source", "predict_inputs", "write_predictions", "write_prediction_file", "rows_of", "pair_tools",
           "StackSink", "load_tools_model", "model_config", "uses_prior", "build_provider", "PRED_COLUMNS",
           "TINY_RANDOM_CONFIG"]
