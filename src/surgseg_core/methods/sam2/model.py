"""The trainable SAM2 module: a ``SAM2Base`` (built by
``sam2_engine.build_model``) plus the prompt sampling of SAM2's training
(``SAM2Train.prepare_prompt_inputs``), so the trainer (and DDP) can call
``model(batch)``. State-dict keys are the SAM2 model's own under ``sam.``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ...errors import ConfigError
from .clip import box_prompt, clip_forward, mask_prompt, point_prompt


class SAM2ClipModel(torch.nn.Module):
    """``forward(batch)`` -> per-frame outputs of :func:`clip_forward`.

    Training: the first frame gets a box (``prob_box``), one click
    (``prob_point``) or the ground-truth mask (the rest) for all objects of
    the batch, boxes jittered by ``box_noise``; with ``correction_points`` > 0
    the first frame and ``correction_frames - 1`` random later frames receive
    that many corrective clicks (point/box prompts only, as in SAM2).
    Evaluation: an exact box on the first frame, no corrections.
    """

    def __init__(self, sam, *, prob_box: float = 0.5, prob_point: float = 0.0, box_noise: float = 0.1,
                 correction_points: int = 0, correction_frames: int = 1,
                 keep_recent_prompt_frames: Optional[int] = None) -> None:
        super().__init__()
        self.sam = sam
        self.prob_box, self.prob_point = float(prob_box), float(prob_point)
        if self.prob_box < 0 or self.prob_point < 0 or self.prob_box + self.prob_point > 1:
            raise ConfigError(f"prob_box ({prob_box}) and prob_point ({prob_point}) must be >= 0 with sum <= 1")
        self.box_noise = float(box_noise)
        self.correction_points = int(correction_points)
        self.correction_frames = max(1, int(correction_frames))
        self.keep_recent_prompt_frames = keep_recent_prompt_frames

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    def sample_prompts(self, masks: torch.Tensor) -> Dict[int, Dict[str, torch.Tensor]]:
        """Frame-0 prompts from ``masks`` [T, O, S, S] (torch's RNG: the trainer seeds it)."""
        first = masks[0]
        if not self.training:
            return {0: box_prompt(first)}
        u = float(torch.rand(()))
        if u < self.prob_box:
            return {0: box_prompt(first, noise=self.box_noise)}
        if u < self.prob_box + self.prob_point:
            return {0: point_prompt(first)}
        return {0: mask_prompt(first)}

    def forward(self, batch: Mapping[str, Any]) -> List[Dict[str, Any]]:
        images, masks = batch["images"], batch["masks"]
        prompts = batch.get("prompts") or self.sample_prompts(masks)
        correct: Sequence[int] = ()
        if self.training and self.correction_points > 0 and "mask_inputs" not in prompts.get(0, {}):
            T = int(images.shape[1])
            extra = torch.randperm(max(0, T - 1))[: self.correction_frames - 1] + 1
            correct = [0] + [int(t) for t in extra]
        return clip_forward(
            self.sam, images, batch["obj_video"], prompts, gt_masks=masks, correct_frames=correct,
            num_correction_points=self.correction_points, keep_recent_prompt_frames=self.keep_recent_prompt_frames,
        )


def freeze_modules(model: torch.nn.Module, prefixes: Sequence[str]) -> List[str]:
    """Switch off gradients of the parameters under each prefix (``image_encoder``,
    ``sam.memory_attention``, ...); returns the frozen names. An unknown prefix
    is an error (a typo would otherwise train everything)."""
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for prefix in prefixes or ():
        p = str(prefix).rstrip(".")
        cands = [p, f"sam.{p}"]
        hit = [n for n in names if any(n == c or n.startswith(c + ".") for c in cands)]
        if not hit:
            tops = sorted({n.split(".")[1] for n in names if n.startswith("sam.")})
            raise ConfigError(f"freeze: no parameters under {prefix!r}; SAM2 modules: {', '.join(tops)}")
        frozen += hit
    frozen_set = set(frozen)
    for n, param in model.named_parameters():
        if n in frozen_set:
            param.requires_grad_(False)
    return sorted(frozen_set)
