"""F2PASeg's configuration: model, class set, data, training and evaluation
keys with the paper's setup as defaults, and building the model from a config.

The paper's setup (sec. 3.2, and its reference config where the paper is
silent; see ``shared/reference/METHODS.md``): SAM2.1-tiny initialisation at
1024 px, 10-frame clips with up to 6 objects (one per class), a box per
visible class every 10 frames, AdamW (0.9, 0.999) at lr 5e-6 (image encoder
3e-6) with layer decay 0.9 and weight decay 0.1 (none on biases / norms),
cosine decay to lr/10, 40 epochs, gradient clip 0.1, bf16 on CUDA, SAM2's
loss 20:1:1:1; the mask decoder frozen except the fusion module.

This module stays cheap to import (no torch): ``surgseg train/evaluate
f2paseg`` is registered by ``methods.f2paseg.train``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from .classes import ClassSet, get_class_set

# keys of the SAM2 model itself (``build_from_config``)
MODEL_CONFIG: Dict[str, Any] = {
    # paper sec. 3.2: SAM2.1-tiny initialisation, 1024 px
    "sam2_config": "sam2.1_hiera_tiny",
    # registered weights name or path to start from; None: random init (tests only: not SAM2's results)
    "base_weights": "sam2.1_hiera_tiny",
    "image_size": 1024,
    "lora_rank": 4,                      # paper: none given; see model.py
    "lora_alpha": 1.0,                   # paper: none given; see model.py
    "fusion_kernel_size": 3,
    "keep_recent_prompt_frames": 2,      # prompt partitioning; 0 = off (SAM2's own selection)
    "freeze_mask_decoder": True,         # paper: decoder frozen except the fusion module
    "freeze": [],                        # more module prefixes that do not train (e.g. image_encoder)
    "seed": 0,                           # also the random init's seed
}

DEFAULT_CONFIG: Dict[str, Any] = {
    **MODEL_CONFIG,
    # classes: "pas" (SF, TS, IP, CR, OCR, OP), "cholecseg8k", or a list of {id, name, colour}
    "class_set": "pas",
    "mask_threshold": 0.0,               # logits above it count; the highest wins (label map)
    # data: dataset_format pas | generic | cholecseg8k (see train.read_clips)
    "dataset_format": "pas",
    "train_root": None,                  # PAS: the dataset root (its train_split); else a clip folder
    "val_root": None,                    # default for PAS: train_root's val_split (when it exists)
    "train_split": "train",
    "val_split": "val",
    "eval_split": "test",                # surgseg evaluate on a PAS root
    "clip_len": 10,                      # paper: 10-frame clips
    "max_objects": 6,                    # paper: up to 6 objects, one per class
    "max_stride": 1,
    "box_every": 10,                     # paper: a box per visible class every 10 frames
    "box_jitter": 0.1,                   # training only (SAM's box noise: fraction of the box side, <= 20 px)
    "hflip": 0.0,                        # clip-consistent flip probability (SAM2.1's fine-tuning recipe: 0.5)
    "affine_degrees": 0.0,               # clip-consistent rotation within +-this (SAM2.1's recipe: 25)
    "affine_shear": 0.0,                 # clip-consistent shear within +-this (SAM2.1's recipe: 20)
    "augment_instruments": False,        # instrument overlay on rare-class clips (paper sec. 2.3)
    "instrument_root": None,             # donors: clips with instrument masks (generic layout or CholecSeg8k)
    "instrument_format": "generic",      # generic: any non-zero mask value is instrument | cholecseg8k
    "hidden_label": 0,                   # label under a pasted instrument (0 background, 255 ignore)
    # loss: SAM2's focal 20 : dice 1 : IoU-L1 1 : object-score BCE 1 (paper eq. 3)
    "loss_weights": None,
    # optimisation (paper sec. 3.2 + its reference config)
    "epochs": 40,
    "batch_size": 1,
    "lr": 5e-6,
    "lr_by_module": {"sam.image_encoder": 3e-6},
    "layer_decay": 0.9,
    "weight_decay": 0.1,
    "betas": [0.9, 0.999],
    "scheduler": "cosine",
    "schedule_unit": "step",
    "min_lr_ratio": 0.1,
    "warmup_steps": 0,
    "grad_clip": 0.1,
    "precision": "auto",                 # bf16 on CUDA, float32 on CPU
    "checkpoint_trainable_only": True,   # frozen parts come from base_weights when loading
    "ddp_find_unused_parameters": True,
    # evaluation
    "eval_max_frames": None,             # first N frames of each clip
    "compare_base": True,                # evaluate: plain SAM2 (base weights) on the same prompts too
    "plain_keep_recent_prompt_frames": 0,  # the plain row: 0 = SAM2's own prompt selection
}

# keys the trainer and the checkpoint loader put into a config besides the method's
_OTHER_KEYS = {"method", "checkpoint", "variant", "data_root", "data", "num_layers", "val_batch_size"}


def class_set_of(config: Mapping[str, Any]) -> ClassSet:
    return get_class_set(config.get("class_set", DEFAULT_CONFIG["class_set"]))


def check_keys(config: Mapping[str, Any]) -> None:
    """ConfigError for a key neither F2PASeg nor the trainer knows (a typo
    would otherwise be ignored silently)."""
    from ...config import check_config
    from ...training.trainer import TRAINER_DEFAULTS

    # the shared checker (names the closest key, checks types); the trainer checks the
    # user's layer already, this covers Python callers of build_from_config / build_datasets
    check_config(config, {**TRAINER_DEFAULTS, **dict.fromkeys(_OTHER_KEYS), **DEFAULT_CONFIG}, what="f2paseg config")


def _random_init_ok(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("base_weights") in (None, "", "none", "random")


def build_from_config(config: Mapping[str, Any], device=None):
    """The F2PASeg SAM2 model of ``config`` (DEFAULT_CONFIG under it), in
    eval mode, with the paper's freezing applied when ``freeze_mask_decoder``.

    Base weights that are not on this machine raise WeightsError saying how
    to get them, or to set ``base_weights: null`` for a random init."""
    from ...errors import WeightsError
    from .model import build_f2paseg, freeze_for_finetuning

    check_keys(config)
    cfg = {**DEFAULT_CONFIG, **dict(config)}
    weights = None if _random_init_ok(cfg) else cfg["base_weights"]
    size = cfg.get("image_size")
    try:
        model = build_f2paseg(
            cfg["sam2_config"], weights, rank=int(cfg["lora_rank"]), alpha=float(cfg["lora_alpha"]),
            kernel_size=int(cfg["fusion_kernel_size"]),
            keep_recent_prompt_frames=int(cfg["keep_recent_prompt_frames"] or 0),
            image_size=None if size in (None, "", 0) else int(size), device=device, seed=int(cfg.get("seed") or 0),
        )
    except WeightsError as exc:
        raise WeightsError(f"f2paseg: cannot load the base weights {weights!r}: {exc} (F2PASeg fine-tunes "
                           "SAM 2.1; --set base_weights=null starts from random weights instead, for tests: "
                           "its results are not the paper's)") from None
    if cfg["freeze_mask_decoder"]:
        freeze_for_finetuning(model)
    return model
