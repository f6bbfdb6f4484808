"""A disk cache of frozen-encoder features, for methods that train only heads.

An entry is keyed by (model hash, frame hash, size): the encoder's weights,
the frame's pixels and the processing size. Any change of one of them is a
different key, so a stale entry can never be returned. Entries are
safetensors files written atomically (``atomic.py``); a damaged file is
recomputed. Layout: ``folder/<model hash[:16]>/<key[:2]>/<key>.safetensors``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_path

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


def module_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim: BN counters
    return h.hexdigest()


def frame_hash(frame: np.ndarray) -> str:
    arr = np.ascontiguousarray(frame)
    h = hashlib.sha256(f"{arr.dtype}|{arr.shape}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class FeatureCache:
    """``get_or_compute(frame, compute)`` returns ``{name: tensor}`` for a
    frame, from disk when an entry with the same key exists."""

    def __init__(self, folder: PathLike, model_hash: str, size: int) -> None:
        self.folder = Path(folder)
        self.model_hash = str(model_hash)
        self.size = int(size)
        self.hits = 0
        self.misses = 0

    def key(self, frame: np.ndarray) -> str:
        return hashlib.sha256(f"{self.model_hash}:{frame_hash(frame)}:{self.size}".encode()).hexdigest()

    def path(self, frame: np.ndarray) -> Path:
        k = self.key(frame)
        return self.folder / self.model_hash[:16] / k[:2] / f"{k}.safetensors"

    def get(self, frame: np.ndarray) -> Optional[Dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        path = self.path(frame)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception as exc:  # damaged entry: recompute it
            log.warning("feature cache entry %s unreadable (%s); recomputing", path, exc)
            return None

    def put(self, frame: np.ndarray, tensors: Dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        path = self.path(frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        return path

    def get_or_compute(self, frame: np.ndarray, compute: Callable[[], Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        found = self.get(frame)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        tensors = compute()
        self.put(frame, tensors)
        return tensors


def sam2_feature_cache(folder: PathLike, sam) -> FeatureCache:
    """A cache for ``sam``'s image encoder at its processing size."""
    return FeatureCache(folder, module_hash(sam.image_encoder), int(sam.image_size))


def cached_backbone_out(sam, frames: Sequence[np.ndarray], cache: FeatureCache) -> dict:
    """SAM2's ``forward_image`` output for uint8 RGB ``frames``, each frame's
    features read from / written to ``cache`` (no gradients: frozen encoder)."""
    from ..sam2_engine.engine import preprocess_frame

    device = next(sam.parameters()).device
    per_frame: List[Dict[str, torch.Tensor]] = []
    for frame in frames:
        def compute(frame=frame):
            with torch.no_grad():
                x = preprocess_frame(frame, int(sam.image_size)).unsqueeze(0).to(device)
                out = sam.image_encoder(x)
            tensors = {f"fpn{i}": t[0] for i, t in enumerate(out["backbone_fpn"])}
            tensors.update({f"pos{i}": t[0] for i, t in enumerate(out["vision_pos_enc"])})
            return tensors
        per_frame.append(cache.get_or_compute(frame, compute))
    n = sum(1 for k in per_frame[0] if k.startswith("fpn"))
    stack = lambda key: torch.stack([f[key] for f in per_frame]).to(device)  # noqa: E731
    out = {"backbone_fpn": [stack(f"fpn{i}") for i in range(n)],
           "vision_pos_enc": [stack(f"pos{i}") for i in range(n)],
           "vision_features": stack(f"fpn{n - 1}")}
    return finish_backbone_out(sam, out)


def finish_backbone_out(sam, out: dict) -> dict:
    """The part of ``SAM2Base.forward_image`` after the image encoder: the
    mask decoder's high-resolution projections (``conv_s0/conv_s1``), which
    belong to the decoder and train with it, so they are never cached."""
    if sam.use_high_res_features_in_sam:
        out["backbone_fpn"] = list(out["backbone_fpn"])
        out["backbone_fpn"][0] = sam.sam_mask_decoder.conv_s0(out["backbone_fpn"][0])
        out["backbone_fpn"][1] = sam.sam_mask_decoder.conv_s1(out["backbone_fpn"][1])
    return out
