"""Mask priors: a promptable segmenter turns decoded tip/anchor points into an
instrument mask M^c.

:class:`MaskPriorProvider` is the small interface (the paper uses SAM 3
zero-shot; we use our SAM2 engine, and another promptable model can be
plugged in by implementing ``__call__`` and ``identity``).
:class:`SAM2MaskPrior` prompts SAM2 with all points as positive clicks on the
frame's image features, which come from the platform's disk feature cache
when one is given (``training.feature_cache``) and are otherwise encoded per
call. :class:`PriorCache` keeps computed priors on disk (uint8 PNG, 0..255
probability) so training computes each frame's prior once.

Without trained SAM2 weights (none can be downloaded here) the prior comes
from a randomly initialised SAM2: the pipeline runs, but the prior carries
no instrument shape; results say which weights were used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Union, runtime_checkable

import numpy as np

PathLike = Union[str, Path]


@runtime_checkable
class MaskPriorProvider(Protocol):
    """``provider(frame, points) -> mask``: ``frame`` (H, W, 3) uint8 RGB,
    ``points`` (P, 2) x, y in frame pixels (positive prompts; P may be 0),
    returns (H, W) float32 in 0..1 (all zeros without points).
    ``identity``: a string that changes whenever the masks would (weights,
    settings); it keys cached priors."""

    identity: str

    def __call__(self, frame: np.ndarray, points: np.ndarray) -> np.ndarray: ...


class SAM2MaskPrior:
    """SAM2 prompted with positive points -> the best (single-mask) output,
    upsampled to the frame and passed through a sigmoid."""

    def __init__(self, sam, feature_cache=None) -> None:
        from ...training.feature_cache import module_hash

        self.sam = sam
        self.feature_cache = feature_cache
        self.identity = f"sam2:{module_hash(sam)[:24]}:{int(sam.image_size)}"
        self.model_name = getattr(sam, "surgseg_model_name", "SAM2")

    def _features(self, frame: np.ndarray):
        from ...sam2_engine.engine import preprocess_frame
        from ...sam2_engine.heads import FrameFeatures, encode_frames
        from ...training.feature_cache import cached_backbone_out

        if self.feature_cache is not None:
            out = cached_backbone_out(self.sam, [frame], self.feature_cache)
            return FrameFeatures(list(out["backbone_fpn"]), list(out["vision_pos_enc"]))
        device = next(self.sam.parameters()).device
        x = preprocess_frame(frame, int(self.sam.image_size)).unsqueeze(0).to(device)
        return encode_frames(self.sam, x)

    def __call__(self, frame: np.ndarray, points: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from ...sam2_engine.heads import decode_masks

        h, w = frame.shape[:2]
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        if len(pts) == 0:
            return np.zeros((h, w), np.float32)
        size = float(self.sam.image_size)
        device = next(self.sam.parameters()).device
        with torch.inference_mode():
            feats = self._features(frame)
            # SAM's prompt coordinates: frame pixels scaled to the square model input
            coords = torch.from_numpy((pts + 0.5) * np.array([size / w, size / h], np.float32))[None].to(device)
            labels = torch.ones((1, len(pts)), dtype=torch.int32, device=device)
            out = decode_masks(self.sam, feats, point_coords=coords, point_labels=labels, multimask_output=False)
            logits = F.interpolate(out.best_masks.float(), size=(h, w), mode="bilinear", align_corners=False)
            return torch.sigmoid(logits)[0, 0].cpu().numpy().astype(np.float32)


def build_sam2_prior(config: Mapping[str, Any], device=None) -> SAM2MaskPrior:
    """The SAM2 prior from config keys ``prior_sam2_config`` (default
    ``surgseg_tiny``), ``prior_sam2_weights`` (None: random init, said in a
    warning), ``prior_feature_cache`` (folder for encoder features or None)."""
    import logging

    from ...sam2_engine.build import build_model
    from ...training.feature_cache import sam2_feature_cache

    if device is None and str(config.get("device", "auto")) != "auto":
        device = config.get("device")
    sam = build_model(str(config.get("prior_sam2_config") or "surgseg_tiny"), config.get("prior_sam2_weights"),
                      device=device, seed=int(config.get("seed", 0)))
    if not config.get("prior_sam2_weights"):
        logging.getLogger(__name__).warning(
            "tool mask prior: SAM2 has RANDOM weights (%s); the prior carries no instrument shape",
            sam.surgseg_model_name)
    cache = sam2_feature_cache(config["prior_feature_cache"], sam) if config.get("prior_feature_cache") else None
    return SAM2MaskPrior(sam, cache)


class PriorCache:
    """Priors on disk: ``folder/<key>/<video id>/<frame>.png``. ``key`` names
    everything the prior depends on (coarse weights, provider, decoding), so a
    stale prior is never read."""

    def __init__(self, folder: PathLike, key_parts: Mapping[str, Any]) -> None:
        text = json.dumps(dict(key_parts), sort_keys=True, default=str)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.folder = Path(folder).expanduser() / self.key
        self.key_parts = dict(key_parts)

    def path(self, video: PathLike, frame: int) -> Path:
        vid = hashlib.sha256(str(Path(video).resolve()).encode()).hexdigest()[:16]
        return self.folder / vid / f"{int(frame):06d}.png"

    def get(self, video: PathLike, frame: int) -> Optional[np.ndarray]:
        from PIL import Image

        p = self.path(video, frame)
        if not p.is_file():
            return None
        try:
            return np.asarray(Image.open(p), np.float32) / 255.0
        except (OSError, ValueError):
            return None  # damaged: recompute

    def put(self, video: PathLike, frame: int, prior: np.ndarray) -> Path:
        from ...synth.writer import write_png

        p = self.path(video, frame)
        p.parent.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").is_file():
            from ...atomic import atomic_write_text

            atomic_write_text(self.folder / "key.json", json.dumps(self.key_parts, indent=1, default=str) + "\n")
        write_png(p, np.clip(np.rint(np.asarray(prior) * 255.0), 0, 255).astype(np.uint8))
        return p


def default_prior_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("surgseg")) / "tool_priors"


__all__ = ["MaskPriorProvider", "SAM2MaskPrior", "PriorCache", "build_sam2_prior", "default_prior_cache_dir"]
