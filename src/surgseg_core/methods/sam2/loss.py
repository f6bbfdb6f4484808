"""SAM2's multi-step, multi-mask loss (``training/loss_fns.py``,
``MultiStepMultiMasksAndIous``) with the weights of SAM2's training configs.

Per frame and decoding step: sigmoid focal loss (alpha 0.25, gamma 2) and
Dice on the multimask output with the lowest ``20 * focal + dice`` (as SAM),
an L1 loss between the predicted IoU and the actual IoU of every mask
(``supervise_all_iou``), and a BCE on the object score (focal with gamma 0,
no alpha); mask, Dice and IoU terms count only where the object is present.
Summed over steps and frames, divided by the number of objects.

SAM2's class lives in the top-level ``training`` package of the sam2 wheel,
whose import pulls in its whole trainer (tensordict, iopath, tensorboard,
submitit); this is the same arithmetic on plain tensors, checked against
SAM2's class in ``tests/test_sam2_training.py``.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F

# SAM2.1 training config (configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml)
WEIGHTS: Dict[str, float] = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def _focal(logits, targets, alpha: float, gamma: float):
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _step_losses(masks, target, ious, obj_logits, num_objects: float, weights: Mapping[str, float]):
    """Terms of one decoding step. masks [O, M, H, W] logits, target [O, 1, H, W]."""
    target = target.expand_as(masks)
    focal = _focal(masks, target, 0.25, 2.0).flatten(2).mean(-1) / num_objects  # [O, M]
    prob = masks.sigmoid().flatten(2)
    tgt = target.flatten(2)
    dice = (1 - (2 * (prob * tgt).sum(-1) + 1) / (prob.sum(-1) + tgt.sum(-1) + 1)) / num_objects
    pred_bin, gt_bin = masks.flatten(2) > 0, tgt > 0
    actual = (pred_bin & gt_bin).sum(-1).float() / torch.clamp((pred_bin | gt_bin).sum(-1).float(), min=1.0)
    iou = F.l1_loss(ious, actual, reduction="none") / num_objects
    present = torch.any((target[:, 0] > 0).flatten(1), dim=-1)[..., None].float()  # [O, 1]
    cls = _focal(obj_logits, present, -1.0, 0.0).mean(1).sum() / num_objects
    if focal.size(1) > 1:
        best = torch.argmin(focal * weights["loss_mask"] + dice * weights["loss_dice"], dim=-1)
        rows = torch.arange(focal.size(0), device=focal.device)
        focal, dice = focal[rows, best].unsqueeze(1), dice[rows, best].unsqueeze(1)
        iou = iou.mean(dim=-1).unsqueeze(1)  # supervise_all_iou
    return {
        "loss_mask": (focal * present).sum(),
        "loss_dice": (dice * present).sum(),
        "loss_iou": (iou * present).sum(),
        "loss_class": cls,
    }


def multistep_loss(
    outputs: List[Mapping[str, object]], targets: torch.Tensor, weights: Optional[Mapping[str, float]] = None
) -> Dict[str, torch.Tensor]:
    """Loss terms and their weighted sum (``"loss"``) over a clip.

    outputs: one dict per frame with ``multistep_pred_multimasks_high_res``,
    ``multistep_pred_ious`` and ``multistep_object_score_logits`` (what
    :func:`~.clip.clip_forward` returns); targets: [T, O, H, W] masks.
    """
    weights = dict(WEIGHTS if weights is None else weights)
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} frame outputs for {len(targets)} target frames")
    num_objects = max(1.0, float(targets.shape[1]))
    terms = {k: 0.0 for k in WEIGHTS}
    total = 0.0
    for out, target in zip(outputs, targets):
        tgt = target.unsqueeze(1).float()
        for masks, ious, logits in zip(out["multistep_pred_multimasks_high_res"], out["multistep_pred_ious"],
                                       out["multistep_object_score_logits"]):
            step = _step_losses(masks, tgt, ious, logits, num_objects, weights)
            for k, v in step.items():
                terms[k] = terms[k] + v
    for k, w in weights.items():
        if w:
            total = total + terms[k] * w
    return {**terms, "loss": total}
