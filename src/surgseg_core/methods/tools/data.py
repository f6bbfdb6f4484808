"""Tool landmark datasets: annotated frames of videos, each item the clip
t-k..t+k around an annotated frame (the shared frame-window reader), its
Gaussian targets and, per stage, the mask-augmented target (``direct``) or
the precomputed mask prior (``refine``).

A dataset folder holds annotation files (``tool_annotations.csv`` / ``.json``,
see ``annotations``) anywhere below it; their ``video`` entries are relative
to the file. Videos are opened lazily, one small frame cache each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ...errors import DatasetError
from ...progress import CancelToken, ProgressCallback, check_cancel, report
from . import ACTIONS, LANDMARK_TYPES
from .annotations import ToolAnnotation, find_annotation_files, frames_by_index, read_annotations, \
    validate_against_videos
from .heatmaps import mask_augmented_targets, targets, to_heatmap

log = logging.getLogger(__name__)
MAX_POINTS = 4  # padded true points per type and item (for batch metrics)


@dataclass(frozen=True)
class FrameSample:
    video: Path  # resolved path of the video / frame folder
    frame: int
    records: Tuple[ToolAnnotation, ...]  # the active tool(s); empty for a negative frame
    annotation_dir: Path


def _video_info(path: Path) -> Tuple[int, int, int]:
    from ...io import open_video

    with open_video(path, cache_mb=0) as src:
        n, h, w, _ = src.shape
    return n, h, w


def find_samples(root, actions: Sequence[str] = ACTIONS) -> List[FrameSample]:
    """All annotated frames under ``root``, checked against their videos."""
    out: List[FrameSample] = []
    for f in find_annotation_files(root):
        records = read_annotations(f, actions)
        validate_against_videos(records, f.parent, _video_info, where=f)
        for (video, frame), recs in sorted(frames_by_index(records).items()):
            out.append(FrameSample((f.parent / video).resolve(), frame, tuple(recs), f.parent))
    if not out:
        raise DatasetError(f"{root}: the annotation files list no frames")
    return out


def points_of(sample: FrameSample, kind: str) -> np.ndarray:
    pts = [r.point(kind) for r in sample.records if r.point(kind) is not None]
    return np.asarray(pts, np.float64).reshape(-1, 2)


def tool_mask_from_folder(sample: FrameSample) -> Optional[np.ndarray]:
    """The active tool(s) mask from an ``instruments/`` folder of index PNGs
    next to the annotations (the synthetic layout), or None."""
    from PIL import Image

    p = sample.annotation_dir / "instruments" / f"{sample.frame:06d}.png"
    if not p.is_file():
        return None
    ids = np.asarray(Image.open(p))
    return np.isin(ids, [r.tool_id for r in sample.records]).astype(np.float32)


class ToolFrameDataset(torch.utils.data.Dataset):
    """Items: ``clip`` (T, 3, h, w) float 0..1, ``target`` (C, h, w),
    ``points`` (C, MAX_POINTS, 2) true points in IMAGE pixels (NaN padded),
    ``image_size`` (2,) width, height, ``index``; plus ``regions`` (C, h, w)
    for ``mode="direct"`` and ``prior`` (1, h, w) when ``priors`` is given."""

    def __init__(self, samples: Sequence[FrameSample], config: Mapping[str, Any], *, train: bool,
                 mode: str = "coarse", priors=None, direct_masks=None) -> None:
        self.samples = list(samples)
        self.k = int(config.get("k", 2))
        self.size = (int(config["input_width"]), int(config["input_height"]))
        self.sigma = float(config.get("sigma", 2.0))
        self.flip = bool(config.get("flip", True)) and train
        self.mode = mode
        self.alpha = float(config.get("mask_alpha", 0.1))
        self.kpt_radius = config.get("kpt_radius")
        self.priors = priors  # callable(sample) -> (H, W) float prior, or None
        self.direct_masks = direct_masks  # callable(sample) -> (H, W) mask, for mode "direct"
        self.cache_mb = float(config.get("video_cache_mb", 64))
        self._sources: Dict[Path, Any] = {}
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def source(self, video: Path):
        from ...io import open_video

        src = self._sources.get(video)
        if src is None:
            src = self._sources[video] = open_video(video, cache_mb=self.cache_mb)
        return src

    def __getstate__(self):  # worker processes open their own decoders
        state = dict(self.__dict__)
        state["_sources"] = {}
        return state

    def window(self, sample: FrameSample) -> np.ndarray:
        from ...io import frame_window

        return frame_window(self.source(sample.video), sample.frame, self.k)

    def resize_clip(self, window: np.ndarray) -> torch.Tensor:
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(window)).permute(0, 3, 1, 2).float().div_(255.0)
        w, h = self.size
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return x

    def _resize_map(self, m: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        w, h = self.size
        t = torch.from_numpy(np.ascontiguousarray(m, np.float32))[None, None]
        if t.shape[-2:] != (h, w):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return t[0, 0].numpy()

    def __getitem__(self, i: int) -> Dict[str, Any]:
        s = self.samples[i]
        win = self.window(s)
        H, W = win.shape[1:3]
        clip = self.resize_clip(win)
        w, h = self.size
        pts_img = [points_of(s, kind) for kind in LANDMARK_TYPES]
        flip = self.flip and np.random.default_rng([self._epoch, i, 7]).random() < 0.5
        if flip:
            clip = clip.flip(-1)
            pts_img = [np.column_stack([W - 1 - p[:, 0], p[:, 1]]) if len(p) else p for p in pts_img]
        pts_hm = [to_heatmap(p, (W, H), (w, h)) for p in pts_img]
        item: Dict[str, Any] = {"clip": clip, "index": i, "image_size": torch.tensor([W, H], dtype=torch.float32)}
        if self.mode == "direct":
            mask = self.direct_masks(s)
            mask = self._resize_map(mask[:, ::-1] if flip else mask) >= 0.5
            target, regions = mask_augmented_targets(pts_hm, mask, self.sigma, self.alpha, self.kpt_radius)
            item["target"] = torch.from_numpy(target)
            item["regions"] = torch.from_numpy(regions)
        else:
            item["target"] = torch.from_numpy(targets(pts_hm, h, w, self.sigma))
        if self.priors is not None:
            prior = self.priors(s)
            prior = self._resize_map(prior[:, ::-1] if flip else prior)
            item["prior"] = torch.from_numpy(np.ascontiguousarray(prior))[None]
        padded = np.full((len(LANDMARK_TYPES), MAX_POINTS, 2), np.nan, np.float32)
        for c, p in enumerate(pts_img):
            padded[c, : min(len(p), MAX_POINTS)] = p[:MAX_POINTS]
        item["points"] = torch.from_numpy(padded)
        return item

    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        self._sources.clear()


# ------------------------------------------------------------------ priors
def coarse_points(model, clip: torch.Tensor, image_size: Tuple[int, int], config: Mapping[str, Any]) -> np.ndarray:
    """Decoded coarse tip + anchor points of one clip (T, 3, h, w), image pixels: (P, 2)."""
    from .heatmaps import decode_heatmaps, to_image

    device = next(model.parameters()).device
    with torch.no_grad():
        heat = model(clip[None].to(device))[0].float().cpu().numpy()
    peaks = decode_heatmaps(heat, LANDMARK_TYPES, float(config.get("threshold", 0.3)),
                            int(config.get("nms_radius", 3)), _max_peaks(config))
    hm_size = (heat.shape[-1], heat.shape[-2])
    pts = [to_image(p[:, :2], image_size, hm_size) for p in peaks.values() if len(p)]
    return np.concatenate(pts, 0) if pts else np.zeros((0, 2))


def _max_peaks(config: Mapping[str, Any]) -> Optional[int]:
    v = config.get("max_tools", 1)
    return None if v in (None, 0, "all") else int(v)


def prior_key(coarse, provider, config: Mapping[str, Any]) -> dict:
    from ...training.feature_cache import module_hash

    return {"coarse": module_hash(coarse)[:24], "provider": provider.identity, "k": int(config.get("k", 2)),
            "size": [int(config["input_width"]), int(config["input_height"])],
            "threshold": float(config.get("threshold", 0.3)), "nms_radius": int(config.get("nms_radius", 3)),
            "max_tools": config.get("max_tools", 1)}


def precompute_priors(samples: Sequence[FrameSample], coarse, provider, cache, config: Mapping[str, Any], *,
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> int:
    """Compute the missing priors of ``samples`` into ``cache`` (coarse
    prediction -> decoded points -> provider); returns how many were computed."""
    ds = ToolFrameDataset(samples, config, train=False)
    todo = [i for i, s in enumerate(samples) if not cache.path(s.video, s.frame).is_file()]
    coarse.eval()
    try:
        for n, i in enumerate(todo):
            check_cancel(cancel)
            s = samples[i]
            win = ds.window(s)
            pts = coarse_points(coarse, ds.resize_clip(win), (win.shape[2], win.shape[1]), config)
            cache.put(s.video, s.frame, provider(win[ds.k], pts))
            report(progress, n + 1, len(todo), f"mask priors {n + 1}/{len(todo)}")
    finally:
        ds.close()
    return len(todo)


__all__ = ["FrameSample", "ToolFrameDataset", "find_samples", "points_of", "precompute_priors", "prior_key",
           "coarse_points", "tool_mask_from_folder"]
