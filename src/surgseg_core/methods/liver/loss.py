"""Composite loss of paper eq. 2:

    L = alpha * wCE + beta * Dice + gamma * Huber + delta * FocalTversky

Every term works on the network's soft output so that each one has a gradient
(the reference code's Huber term on an argmax had none, and its Dice dropped
the background class through ``ignore_index=0``):

* wCE: cross-entropy with per-class weights (eq. 1), PyTorch's weighted mean
  ``sum_n w[y_n] * nll_n / sum_n w[y_n]``.
* Dice: soft Dice over ALL classes including background,
  ``1 - mean_c (2 sum p_c g_c + s) / (sum p_c + sum g_c + s)`` with p the
  softmax probabilities and g the one-hot truth, sums over batch and pixels.
* Huber: ``mean smooth_l1(p - g)`` with threshold ``huber_delta`` on
  probabilities versus one-hot (not on the argmax).
* Focal-Tversky (Abraham & Khan 2019): ``TI_c = (TP + s) / (TP + a FN + b FP + s)``
  with soft TP/FN/FP, loss ``mean_c (1 - TI_c) ** ftl_exponent``; their best
  setting a=0.7, b=0.3, exponent 1/gamma = 0.75 (gamma = 4/3) is the default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) int64 -> (B, C, H, W) float."""
    return F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, target.long(), weight=weight)


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


def huber_loss(probs: torch.Tensor, onehot: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    return F.huber_loss(probs, onehot, reduction="mean", delta=delta)


def focal_tversky_loss(probs: torch.Tensor, onehot: torch.Tensor, alpha: float = 0.7, beta: float = 0.3,
                       exponent: float = 0.75, smooth: float = 1.0) -> torch.Tensor:
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fn = ((1.0 - probs) * onehot).sum(dims)
    fp = (probs * (1.0 - onehot)).sum(dims)
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    # clamp: x ** 0.75 has an infinite slope at 0
    return ((1.0 - tversky).clamp_min(1e-7) ** exponent).mean()


@dataclass
class LossWeights:
    alpha: float = 1.0   # weighted cross-entropy
    beta: float = 0.0    # Dice
    gamma: float = 0.0   # Huber
    delta: float = 0.0   # Focal-Tversky

    @classmethod
    def from_config(cls, config: Mapping) -> "LossWeights":
        w = cls(*(float(config.get(k, d)) for k, d in
                  (("loss_alpha", 1.0), ("loss_beta", 0.0), ("loss_gamma", 0.0), ("loss_delta", 0.0))))
        if min(w.alpha, w.beta, w.gamma, w.delta) < 0 or w.alpha + w.beta + w.gamma + w.delta <= 0:
            raise ConfigError(
                f"loss weights must be >= 0 and not all zero, got alpha={w.alpha} beta={w.beta} "
                f"gamma={w.gamma} delta={w.delta}"
            )
        return w


def composite_loss(logits: torch.Tensor, target: torch.Tensor, weights: LossWeights,
                   class_weights: Optional[Sequence[float] | torch.Tensor] = None, *,
                   huber_delta: float = 1.0, dice_smooth: float = 1.0, ftl_alpha: float = 0.7,
                   ftl_beta: float = 0.3, ftl_exponent: float = 0.75) -> torch.Tensor:
    """Paper eq. 2. ``logits`` (B, C, H, W), ``target`` (B, H, W) class indices."""
    num_classes = logits.shape[1]
    if class_weights is not None and not torch.is_tensor(class_weights):
        class_weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
    total = logits.new_zeros(())
    if weights.alpha:
        total = total + weights.alpha * weighted_cross_entropy(logits, target, class_weights)
    if weights.beta or weights.gamma or weights.delta:
        probs = logits.float().softmax(1)
        onehot = one_hot(target, num_classes)
        if weights.beta:
            total = total + weights.beta * soft_dice_loss(probs, onehot, dice_smooth)
        if weights.gamma:
            total = total + weights.gamma * huber_loss(probs, onehot, huber_delta)
        if weights.delta:
            total = total + weights.delta * focal_tversky_loss(probs, onehot, ftl_alpha, ftl_beta, ftl_exponent,
                                                               dice_smooth)
    return total
