"""A differentiable T-frame clip forward through SAM2's video memory.

This is SAM2's own training forward (``training/model/sam2.py``,
``SAM2Train.forward_tracking``) on top of a plain ``SAM2Base``: the image
encoder runs once on all frames, the prompted frames are decoded first, then
every other frame is decoded with memory attention over the memories of the
frames before it, and each prediction is encoded into a new memory - all
with gradients. Which earlier outputs a frame attends to is decided by
:func:`~surgseg_core.sam2_engine.memory.select_memory`, the rule the
streaming engine uses at inference. Corrective clicks are sampled from the
error between prediction and ground truth with SAM2's own samplers.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch

from ...sam2_engine.memory import memory_window, select_memory


def encode_clip_frames(sam, images: torch.Tensor, *, frozen: Optional[bool] = None):
    """Backbone features of ``images`` ([N, 3, S, S]) in SAM2's (HW)BC layout:
    ``(vision_feats, vision_pos_embeds, feat_sizes)`` (``SAM2Base.forward_image``
    + ``_prepare_backbone_features``). With a frozen image encoder
    (``frozen`` default: no encoder parameter requires grad) no graph is kept
    for it; the decoder's projections of its features still train."""
    from ...training.feature_cache import finish_backbone_out

    if frozen is None:
        frozen = not any(p.requires_grad for p in sam.image_encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        backbone_out = sam.image_encoder(images)
    backbone_out = finish_backbone_out(sam, backbone_out)
    return backbone_features(sam, backbone_out)


def backbone_features(sam, backbone_out: dict):
    """``(vision_feats, vision_pos_embeds, feat_sizes)`` of a ``forward_image``
    output (e.g. ``training.feature_cache.cached_backbone_out``)."""
    _, feats, pos, sizes = sam._prepare_backbone_features(backbone_out)
    return feats, pos, sizes


def clip_forward(
    sam,
    images: torch.Tensor,
    obj_video: torch.Tensor,
    prompts: Mapping[int, Mapping[str, torch.Tensor]],
    *,
    gt_masks: Optional[torch.Tensor] = None,
    correct_frames: Sequence[int] = (),
    num_correction_points: int = 0,
    keep_recent_prompt_frames: Optional[int] = None,
    features=None,
    video_frames: Optional[int] = None,
) -> List[Dict[str, object]]:
    """Track ``O`` objects over a batch of clips; one output dict per frame.

    images: [B, T, 3, S, S] normalised frames (``preprocess_frame``).
    obj_video: [O] long, the clip each object belongs to.
    prompts: {frame: {"point_coords": [O, P, 2] (model pixels), "point_labels": [O, P]}
        or {"mask_inputs": [O, 1, S, S]}}; frame 0 must be one of them.
    gt_masks: [T, O, S, S] ground truth, needed for corrective clicks.
    correct_frames / num_correction_points: frames (prompted or not) that
        receive that many clicks sampled from the error region (SAM2's
        ``_iter_correct_pt_sampling``; "uniform" while training).
    features: precomputed ``encode_clip_frames(sam, images.flatten(0, 1))``.
    video_frames: length of the video the clip stands for, which sets SAM2's
        time scale of object pointers (``min(video_frames,
        max_obj_ptrs_in_encoder) - 1``); default: a video of at least
        ``max_obj_ptrs_in_encoder`` frames, what users track.

    Each output holds SAM2's ``multistep_pred_multimasks_high_res``,
    ``multistep_pred_ious`` and ``multistep_object_score_logits`` (lists, one
    entry per decoding step: the input for :func:`~.loss.multistep_loss`),
    ``pred_masks`` / ``pred_masks_high_res`` (final logits) and the memory.
    """
    from sam2.modeling.sam2_utils import get_next_point
    from sam2.utils.misc import concat_points

    B, T = int(images.shape[0]), int(images.shape[1])
    if not prompts:
        raise ValueError("clip_forward needs prompts on at least one frame")
    if features is None:
        features = encode_clip_frames(sam, images.flatten(0, 1))
    feats, pos, sizes = features
    obj_video = obj_video.to(images.device).long()
    stride = 1 if sam.training else sam.memory_temporal_stride_for_eval
    window = memory_window(num_maskmem=sam.num_maskmem, stride=stride, max_obj_ptrs=sam.max_obj_ptrs_in_encoder,
                           num_frames=T)
    # SAM2 scales an object pointer's time offset by min(num_frames, max_obj_ptrs_in_encoder) - 1: 3 in a
    # 4-frame clip but 15 when a video is tracked, so a pointer 3 frames back was encoded as 1.0 in training
    # and 0.2 at inference. The video's length (never below the clip's: no frame is cut) trains the
    # encoding the tracker will see.
    ptr_frames = max(T, int(video_frames) if video_frames else int(sam.max_obj_ptrs_in_encoder))
    cond_frames = sorted(int(t) for t in prompts)
    order = cond_frames + [t for t in range(T) if t not in prompts]
    cond: Dict[int, dict] = {}
    non_cond: Dict[int, dict] = {}
    method = "uniform" if sam.training else "center"
    for t in order:
        img_ids = obj_video * T + t
        cur_feats = [x[:, img_ids] for x in feats]
        cur_pos = [x[:, img_ids] for x in pos]
        is_cond = t in prompts
        prompt = prompts.get(t, {})
        point_inputs = None
        if "point_coords" in prompt:
            point_inputs = {"point_coords": prompt["point_coords"], "point_labels": prompt["point_labels"]}
        mask_inputs = prompt.get("mask_inputs")
        c, nc = select_memory(cond, non_cond, t, False, window=window,
                              keep_recent_prompt_frames=keep_recent_prompt_frames)
        out, sam_outputs, high_res_features, pix_feat = sam._track_step(
            t, is_cond, cur_feats, cur_pos, sizes, point_inputs, mask_inputs,
            {"cond_frame_outputs": c, "non_cond_frame_outputs": nc}, ptr_frames, False, None,
        )
        low_multi, high_multi, ious, low, high, obj_ptr, obj_score = sam_outputs
        steps_multi, steps_ious, steps_score = [high_multi], [ious], [obj_score]
        if t in correct_frames and num_correction_points > 0 and mask_inputs is None:
            if gt_masks is None:
                raise ValueError("corrective clicks need gt_masks")
            gt = gt_masks[t].unsqueeze(1) > 0
            for _ in range(int(num_correction_points)):
                pts, labels = get_next_point(gt_masks=gt, pred_masks=high.detach() > 0, method=method)
                point_inputs = concat_points(point_inputs, pts, labels)
                multimask = sam._use_multimask(is_cond, point_inputs)
                low_multi, high_multi, ious, low, high, obj_ptr, obj_score = sam._forward_sam_heads(
                    backbone_features=pix_feat, point_inputs=point_inputs, mask_inputs=low,
                    high_res_features=high_res_features, multimask_output=multimask,
                )
                steps_multi.append(high_multi)
                steps_ious.append(ious)
                steps_score.append(obj_score)
            out["point_inputs"] = point_inputs
        out.update(
            pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr, object_score_logits=obj_score,
            multistep_pred_multimasks_high_res=steps_multi, multistep_pred_ious=steps_ious,
            multistep_object_score_logits=steps_score,
        )
        sam._encode_memory_in_output(cur_feats, sizes, point_inputs, True, high, obj_score, out)
        (cond if is_cond else non_cond)[t] = out
    return [cond[t] if t in cond else non_cond[t] for t in range(T)]


def box_prompt(masks: torch.Tensor, *, noise: float = 0.0) -> Dict[str, torch.Tensor]:
    """SAM2's box prompt (two corner points labelled 2 and 3) from [O, S, S]
    masks; ``noise``: SAM's jitter as a fraction of the box size (training)."""
    from sam2.modeling.sam2_utils import sample_box_points

    coords, labels = sample_box_points(masks.unsqueeze(1) > 0, noise=noise)
    return {"point_coords": coords.float(), "point_labels": labels.int()}


def point_prompt(masks: torch.Tensor, *, training: bool = True) -> Dict[str, torch.Tensor]:
    """One positive click inside each mask (uniform while training, the
    mask's centre otherwise), as SAM2 samples first clicks."""
    from sam2.modeling.sam2_utils import get_next_point

    coords, labels = get_next_point(masks.unsqueeze(1) > 0, None, "uniform" if training else "center")
    return {"point_coords": coords.float(), "point_labels": labels.int()}


def mask_prompt(masks: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {"mask_inputs": (masks.unsqueeze(1) > 0).float()}
