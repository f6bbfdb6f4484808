"""RP-SAM2's compound loss (paper sec. 2) and its candidate points.

    L = alpha * L_dice + beta * L_dist + gamma * L_out      (1.0, 0.1, 1.0)

* ``L_dice``: 1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1) with p the sigmoid
  of the mask SAM2 decodes from P' (SAM2's choice among its multimask
  outputs, at the decoder's S/4 resolution) and g the object's ground truth
  area-averaged to that resolution (SAM2's training Dice, smooth 1).
* ``L_dist`` (eq. 3): 1/2 (exp(theta |x'-x_g|) + exp(theta |y'-y_g|) - 2) to
  each candidate G, the minimum over the candidates; coordinates divided by
  the image side S (0..1); theta = 15.
* ``L_out``: m = the ground truth bilinearly sampled at P' (pixel centres,
  ``grid_sample`` with ``align_corners=False``; outside the image 0). A point
  with m < 0.5 is outside the object and costs BCE(m, 1) = -log(m), its log
  clamped at log(0.01) (at most 4.6: torch's BCE clamps at -100, which
  would swamp the other terms in the logged loss); a point with m >= 0.5
  costs nothing. Its gradient lives within one pixel of the object's
  boundary (where the bilinear value changes), so it holds points that
  drift just outside; Dice and L_dist carry them from farther away.

Each term is averaged over all clicks of the batch (10 per object).

Candidate points: a grid over the object's pixels (stride chosen so about
``grid_points`` land inside; at least one point per object), each segmented
alone by the frozen SAM2 in one batch; kept if its Dice is within
``epsilon`` = 0.005 (0.5 Dice points) of the object's best.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional

import torch
import torch.nn.functional as F

THETA = 15.0
EPSILON = 0.005
WEIGHTS = {"dice": 1.0, "dist": 0.1, "out": 1.0}
OUT_MIN_PROB = 0.01


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-row Dice loss of logits (N, ...) against targets in [0, 1]."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    return 1 - (2 * (p * g).sum(-1) + smooth) / (p.sum(-1) + g.sum(-1) + smooth)


def hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row Dice of binary masks (N, ...); 1 where both are empty."""
    p, g = pred.flatten(1).float(), target.flatten(1).float()
    denom = p.sum(-1) + g.sum(-1)
    return torch.where(denom > 0, 2 * (p * g).sum(-1) / denom.clamp(min=1e-9), torch.ones_like(denom))


def dist_loss(points: torch.Tensor, candidates: torch.Tensor, theta: float = THETA,
              valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 3, min over candidates. points (N, 2), candidates (N, G, 2) in
    normalised coordinates; ``valid`` (N, G) masks padded candidates."""
    d = (points[:, None, :] - candidates).abs()
    per = 0.5 * (torch.exp(theta * d[..., 0]) + torch.exp(theta * d[..., 1]) - 2)
    if valid is not None:
        per = torch.where(valid, per, torch.full_like(per, float("inf")))
    return per.min(dim=1).values


def sample_mask(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear value of masks (N, H, W) at points (N, 2) (x, y pixel indices,
    pixel centres at integers), 0 outside the image."""
    h, w = masks.shape[-2:]
    grid = torch.stack([(points[:, 0] + 0.5) / w * 2 - 1, (points[:, 1] + 0.5) / h * 2 - 1], -1)
    val = F.grid_sample(masks[:, None].float(), grid[:, None, None, :].to(masks.device).float(), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return val.reshape(-1)


def out_loss(masks: torch.Tensor, points: torch.Tensor, min_prob: float = OUT_MIN_PROB) -> torch.Tensor:
    """Per point: -log(max(m, min_prob)) where m = sampled mask < 0.5, else 0."""
    m = sample_mask(masks, points)
    return torch.where(m < 0.5, -torch.log(m.clamp(min=min_prob)), torch.zeros_like(m))


def compound_loss(outputs: Mapping[str, torch.Tensor], weights: Optional[Mapping[str, float]] = None,
                  theta: float = THETA) -> dict:
    """The three terms and their weighted sum (``"loss"``) over one batch.

    ``outputs`` (what ``train.training_forward`` returns, all clicks of the
    batch concatenated): ``logits`` (N, h, w) mask from P', ``target_low``
    (N, h, w) ground truth at that size, ``points`` (N, 2) P' in model
    pixels, ``candidates`` (N, G, 2) model pixels with ``candidate_valid``
    (N, G), ``target`` (N, S, S) full-size ground truth, ``image_size``."""
    w = {**WEIGHTS, **dict(weights or {})}
    if outputs.get("empty"):
        zero = outputs["zero"]
        return {"loss": zero, "dice": zero, "dist": zero, "out": zero}
    size = float(outputs["image_size"])
    dice = soft_dice_loss(outputs["logits"], outputs["target_low"]).mean()
    dist = dist_loss(outputs["points"] / size, outputs["candidates"] / size, theta,
                     outputs.get("candidate_valid")).mean()
    out = out_loss(outputs["target"], outputs["points"]).mean()
    total = w["dice"] * dice + w["dist"] * dist + w["out"] * out
    return {"loss": total, "dice": dice, "dist": dist, "out": out}


# ------------------------------------------------------------- candidates
def grid_points(mask: torch.Tensor, target: int) -> torch.Tensor:
    """(G, 2) x, y pixel indices of a regular grid over ``mask``'s pixels
    (H, W), about ``target`` of them (all pixels of a smaller object)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    area = int(ys.numel())
    if area == 0:
        return torch.zeros(0, 2, device=mask.device)
    stride = max(1, int(math.floor(math.sqrt(area / max(1, target)))))
    if stride > 1:
        off = stride // 2
        keep = ((ys - off) % stride == 0) & ((xs - off) % stride == 0)
        if not bool(keep.any()):  # a thin object between grid lines: its centre-most pixel
            keep = torch.zeros_like(ys, dtype=torch.bool)
            keep[area // 2] = True
        ys, xs = ys[keep], xs[keep]
    return torch.stack([xs, ys], -1).float()


def select_candidates(points: torch.Tensor, dice: torch.Tensor, epsilon: float = EPSILON) -> torch.Tensor:
    """The points whose Dice is within ``epsilon`` of the best (paper sec. 2)."""
    return points[dice >= dice.max() - epsilon]


def pad_candidates(sets: List[torch.Tensor]) -> tuple:
    """Candidate sets of different sizes -> (N, G, 2) and a validity mask (N, G)."""
    g = max(1, max(int(s.shape[0]) for s in sets))
    device = sets[0].device
    out = torch.zeros(len(sets), g, 2, device=device)
    valid = torch.zeros(len(sets), g, dtype=torch.bool, device=device)
    for i, s in enumerate(sets):
        out[i, : len(s)] = s
        valid[i, : len(s)] = True
    return out, valid
