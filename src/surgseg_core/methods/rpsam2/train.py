"""RP-SAM2's training step (paper sec. 2-3): per object, random clicks are
refined by the shift block, decoded by the frozen SAM2 heads (with
gradients to the block) and compared with the ground truth and with the
object's candidate points.

Frame features come from the platform's disk cache
(``training.feature_cache``; ``feature_cache`` config key, default the user
cache folder), so after the first epoch a step costs only the block and the
heads. Candidates depend only on the frozen SAM2 and the ground truth, so
they are computed once per (item, object) and kept in memory
(``cache_candidates``; the paper computes them on the fly, which gives the
same points).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...sam2_engine.heads import FrameFeatures, encode_frames
from .loss import EPSILON, grid_points, hard_dice, pad_candidates, select_candidates

TRAIN_DEFAULTS: Dict[str, Any] = {
    "points_per_object": 10,    # paper: 10 random clicks per object per step
    "grid_points": 48,          # candidate grid size per object (paper: not given)
    "epsilon": EPSILON,         # candidate tolerance in Dice (0.5 %)
    "feature_cache": None,      # folder of the frozen-encoder feature cache; None: user cache; "off": no cache
    "cache_candidates": True,
    # 0 (paper): clicks inside the object. > 0: clicks anywhere within this many pixels (model
    # resolution) of it, some on the tissue beside it, as a hurried click on a thin instrument lands
    "click_margin": 0.0,
}


def _opt(model, key: str):
    return model.train_options.get(key, TRAIN_DEFAULTS[key])


def default_cache_folder() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("surgseg")) / "features"


def frame_features(model, frame: np.ndarray) -> FrameFeatures:
    """Frozen-encoder features of one uint8 RGB frame, from the disk cache."""
    from ...sam2_engine.engine import preprocess_frame
    from ...training.feature_cache import cached_backbone_out, sam2_feature_cache

    sam = model.sam
    folder = _opt(model, "feature_cache")
    if str(folder).lower() == "off":
        device = next(sam.parameters()).device
        with torch.no_grad():
            return encode_frames(sam, preprocess_frame(frame, int(sam.image_size))[None].to(device))
    if model._feature_cache is None:
        model._feature_cache = sam2_feature_cache(folder or default_cache_folder(), sam)
    with torch.no_grad():
        out = cached_backbone_out(sam, [frame], model._feature_cache)
    return FrameFeatures(list(out["backbone_fpn"]), list(out["vision_pos_enc"]))


def near_region(mask: np.ndarray, margin: float) -> np.ndarray:
    """The pixels within ``margin`` (Euclidean) of ``mask``: where clicks
    land with ``click_margin`` (the mask itself for margin 0)."""
    if margin <= 0:
        return mask
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= float(margin)


def random_points(masks: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                  margin: float = 0.0) -> torch.Tensor:
    """(O, k, 2) x, y pixel indices drawn uniformly from each mask (O, H, W),
    or from the pixels within ``margin`` of it."""
    if margin > 0:
        masks = torch.from_numpy(np.stack([near_region(m, margin) for m in masks.cpu().numpy()])).to(masks.device)
    out = []
    w = masks.shape[-1]
    for m in masks:
        flat = m.flatten().float()
        idx = torch.multinomial(flat.cpu(), k, replacement=True, generator=generator).to(masks.device)
        out.append(torch.stack([idx % w, idx // w], -1).float())
    return torch.stack(out)


@torch.no_grad()
def candidate_points(model, feats: FrameFeatures, image_embed: torch.Tensor, masks: torch.Tensor,
                     target_low: torch.Tensor) -> List[torch.Tensor]:
    """Per object (``masks`` (O, S, S)): the grid points whose plain-SAM2
    mask is within epsilon Dice of the object's best (batched decode)."""
    grids = [grid_points(m > 0, int(_opt(model, "grid_points"))) for m in masks]
    counts = [len(g) for g in grids]
    coords = torch.cat(grids)[:, None, :]
    labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=coords.device)
    out, _ = model.segment(feats, coords, labels, refine=False, image_embed=image_embed)
    targets = torch.cat([target_low[i : i + 1].expand(n, -1, -1) for i, n in enumerate(counts)])
    dice = hard_dice(out.best_masks[:, 0] > 0, targets > 0.5)
    result, start = [], 0
    for g, n in zip(grids, counts):
        result.append(select_candidates(g, dice[start : start + n], float(_opt(model, "epsilon"))))
        start += n
    return result


def training_forward(model, batch: Mapping[str, Any]) -> Dict[str, Any]:
    """All clicks of the batch: refined points, their masks and targets
    (the input of ``loss.compound_loss``); in eval mode also the masks of
    the unrefined clicks (``logits_plain``) for the metrics."""
    k = int(_opt(model, "points_per_object"))
    size = model.image_size
    low = size // 4
    gen = None
    if not model.training:  # validation: the same clicks every epoch
        gen = torch.Generator().manual_seed(1234)
    parts: Dict[str, List[torch.Tensor]] = {key: [] for key in (
        "logits", "target_low", "points", "orig_points", "target", "candidates", "logits_plain")}
    for b, frame in enumerate(batch["frames"]):
        masks = batch["masks"][b].to(next(model.shift.parameters()).device)  # (O, S, S)
        if masks.shape[0] == 0:
            continue
        feats = frame_features(model, frame)
        image_embed = model.image_embedding(feats).detach()
        target_low = F.interpolate(masks[:, None].float(), size=(low, low), mode="area")[:, 0]
        key = batch["keys"][b] if "keys" in batch else None
        cands = None
        if key is not None and _opt(model, "cache_candidates"):
            cands = model._candidates.get((key, size))
        if cands is None:
            cands = candidate_points(model, feats, image_embed, masks, target_low)
            if key is not None and _opt(model, "cache_candidates"):
                model._candidates[(key, size)] = [c.cpu() for c in cands]
        cands = [c.to(masks.device) for c in cands]
        pts = random_points(masks > 0, k, gen, float(_opt(model, "click_margin") or 0.0))  # (O, k, 2)
        coords = pts.reshape(-1, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=coords.device)
        out, refined = model.segment(feats, coords, labels, refine=True, image_embed=image_embed, mode="first")
        obj = torch.arange(masks.shape[0], device=masks.device).repeat_interleave(k)
        parts["logits"].append(out.best_masks[:, 0])
        parts["target_low"].append(target_low[obj])
        parts["points"].append(refined[:, 0])
        parts["orig_points"].append(coords[:, 0])
        parts["target"].append(masks[obj].float())
        parts["candidates"] += [cands[int(o)] for o in obj]
        if not model.training:
            with torch.no_grad():
                plain, _ = model.segment(feats, coords, labels, refine=False, image_embed=image_embed)
            parts["logits_plain"].append(plain.best_masks[:, 0])
    if not parts["logits"]:  # no object in any frame of the batch: nothing to learn from
        return {"empty": True, "zero": sum(p.sum() * 0 for p in model.shift.parameters()), "image_size": size}
    cand, valid = pad_candidates(parts.pop("candidates"))
    result = {key: torch.cat(v) for key, v in parts.items() if v}
    result.update(candidates=cand, candidate_valid=valid, image_size=size)
    return result
