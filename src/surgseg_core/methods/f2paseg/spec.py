"""F2PASeg's configuration: the model, class set and data keys with the
paper's values as defaults, and building the model from a config.

Not yet registered as a training method: ``surgseg train/evaluate f2paseg``
come with the SAM2 clip trainer (issue 11's training part).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from ...errors import ConfigError
from .classes import ClassSet, get_class_set

DEFAULT_CONFIG: Dict[str, Any] = {
    # model (paper sec. 3.2: SAM2.1-tiny initialisation, 1024 px)
    "sam2_config": "sam2.1_hiera_tiny",
    "checkpoint": "sam2.1_hiera_tiny",   # registered weights name or path; None = random init (say so)
    "image_size": 1024,
    "lora_rank": 4,                      # paper: none given; see model.py
    "lora_alpha": 1.0,                   # paper: none given; see model.py
    "fusion_kernel_size": 3,
    "keep_recent_prompt_frames": 2,      # prompt partitioning; 0 = off (SAM2's own selection)
    "freeze_mask_decoder": True,         # paper: decoder frozen except the fusion module
    # classes: "pas" (SF, TS, IP, CR, OCR, OP), "cholecseg8k", or a list of {id, name, colour}
    "class_set": "pas",
    "mask_threshold": 0.0,               # logits above it count; the highest wins (label map)
    # data
    "dataset_format": "pas",             # pas | generic | cholecseg8k
    "box_every": 10,                     # paper: a box per visible class every 10 frames
    "box_jitter": 0.1,                   # training only (fraction of the box side)
    "augment_instruments": False,        # instrument overlay on rare-class clips (paper sec. 2.3)
    "hidden_label": 0,                   # label under a pasted instrument (0 background, 255 ignore)
}


def class_set_of(config: Mapping[str, Any]) -> ClassSet:
    return get_class_set(config.get("class_set", DEFAULT_CONFIG["class_set"]))


def build_from_config(config: Mapping[str, Any], device=None):
    """The F2PASeg model of ``config`` (DEFAULT_CONFIG under it), in eval
    mode, with the paper's freezing applied when ``freeze_mask_decoder``."""
    from .model import build_f2paseg, freeze_for_finetuning

    cfg = {**DEFAULT_CONFIG, **dict(config)}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ConfigError(f"f2paseg: unknown config key(s) {unknown}; known: {', '.join(sorted(DEFAULT_CONFIG))}")
    model = build_f2paseg(
        cfg["sam2_config"], cfg["checkpoint"], rank=int(cfg["lora_rank"]), alpha=float(cfg["lora_alpha"]),
        kernel_size=int(cfg["fusion_kernel_size"]), keep_recent_prompt_frames=int(cfg["keep_recent_prompt_frames"]),
        image_size=cfg["image_size"], device=device,
    )
    if cfg["freeze_mask_decoder"]:
        freeze_for_finetuning(model)
    return model
