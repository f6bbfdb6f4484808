"""The "sam2" method: fine-tune SAM2 (or train a small one from scratch)
through its video memory on clips with per-frame object masks."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from ...errors import ConfigError
from ...training.method import MethodSpec, register_method

DEFAULT_CONFIG: Dict[str, Any] = {
    # model
    "sam2_config": "sam2.1_hiera_tiny",  # config name, or an official checkpoint name (its config)
    "base_weights": None,        # registered name or file to fine-tune from; None: random init
    "image_size": None,          # processing resolution (multiple of 32); None: the config's
    "freeze": ["image_encoder"],  # module prefixes that do not train (and stay in eval mode)
    # data
    "train_root": None,
    "val_root": None,
    "clip_len": 8,
    "val_clip_len": None,        # frames of each validation clip (None: clip_len); longer ones select the
                                 # checkpoint by how it tracks over as many frames as users propagate
    "max_objects": 3,            # objects per clip (SAM2: up to 3 per video while fine-tuning)
    "max_stride": 1,             # random frame step 1..max_stride while training
    "hard_windows": 0.0,         # share of training clips drawn among those with >= 2 objects on the
                                 # first frame or an object leaving while another is in view (0: off)
    "enter_windows": 0.0,        # share drawn among those whose first frame shows an object coming into
                                 # view (<= 1/4 of its area at the window's end)
    "small_windows": 0.0,        # share drawn among those whose first frame shows an object of at most
    "small_area": 64,            # small_area pixels at the model's size; hard + enter + small <= 1
    "hflip": 0.0,                # clip-consistent flip probability (SAM2.1's fine-tuning recipe: 0.5)
    "affine_degrees": 0.0,       # clip-consistent rotation within +-this (SAM2.1's recipe: 25)
    "affine_shear": 0.0,         # clip-consistent shear within +-this (SAM2.1's recipe: 20)
    # prompts (SAM2Train: half point input, of which all boxes; else the mask)
    "prob_box": 0.5,
    "prob_point": 0.0,
    "box_noise": 0.1,
    "correction_points": 0,      # corrective clicks per corrected frame (SAM2's recipe: 7)
    "correction_frames": 2,      # the first frame and random later ones get them
    # loss: SAM2's focal 20 : dice 1 : IoU-L1 1 : object-score BCE 1
    "loss_weights": None,
    # optimisation (SAM2.1 fine-tuning recipe, scaled down)
    "lr": 5e-5,
    "weight_decay": 0.1,
    "layer_decay": 0.9,
    "batch_size": 1,
    "epochs": 10,
    "scheduler": "cosine",
    "schedule_unit": "step",
    "warmup_steps": 0,
    "min_lr_ratio": 0.1,
    "grad_clip": 0.1,
    "checkpoint_trainable_only": True,
    # box/click batches never touch the mask-prompt downsampler: DDP must allow unused parameters
    "ddp_find_unused_parameters": True,
    # evaluation
    "eval_max_frames": None,     # evaluate on the first N frames of each sequence
    "compare_base": True,        # evaluate: also the plain (base) model, side by side
}


def _size(config: Mapping[str, Any]):
    s = config.get("image_size")
    return None if s in (None, "", 0) else int(s)


def build_sam(config: Mapping[str, Any], *, with_base_weights: bool = True):
    from ...sam2_engine.build import build_model

    weights = config.get("base_weights") if with_base_weights else None
    return build_model(str(config.get("sam2_config") or DEFAULT_CONFIG["sam2_config"]), weights or None,
                       device="cpu", image_size=_size(config), seed=int(config.get("seed", 0)))


def build_from_config(config: Mapping[str, Any]) -> torch.nn.Module:
    from .model import SAM2ClipModel, freeze_modules

    sam = build_sam(config)
    model = SAM2ClipModel(
        sam, prob_box=float(config.get("prob_box", 0.5)), prob_point=float(config.get("prob_point", 0.0)),
        box_noise=float(config.get("box_noise", 0.1)), correction_points=int(config.get("correction_points", 0)),
        correction_frames=int(config.get("correction_frames", 1)),
    )
    freeze = config.get("freeze") or []
    if isinstance(freeze, str):
        freeze = [freeze]
    freeze_modules(model, freeze)
    # base model identity, written into trainable-only checkpoints
    model.surgseg_base = {"name": getattr(sam, "surgseg_model_name", None),
                          "sha256": getattr(sam, "surgseg_checkpoint_sha256", None),
                          "config": getattr(sam, "surgseg_config_name", None)}
    return model


def _root(config: Mapping[str, Any], key: str):
    root = config.get(key) or (config.get("data_root") if key == "train_root" else None)
    if key == "train_root" and not root:
        raise ConfigError("sam2: set train_root (clips with per-frame masks), e.g. --set train_root=data/clips")
    return root


def build_datasets(config: Mapping[str, Any]):
    from .data import VideoClipDataset, find_sequences

    size = _size(config)
    if size is None:
        from ...sam2_engine.build import compose_config

        size = int(compose_config(str(config.get("sam2_config") or DEFAULT_CONFIG["sam2_config"])).model.image_size)
    common = dict(image_size=size, clip_len=int(config.get("clip_len", 8)),
                  max_objects=int(config.get("max_objects", 3)), seed=int(config.get("seed", 0)))
    train_ds = VideoClipDataset(find_sequences(_root(config, "train_root")), train=True,
                                max_stride=int(config.get("max_stride", 1)),
                                hard_windows=float(config.get("hard_windows") or 0.0),
                                enter_windows=float(config.get("enter_windows") or 0.0),
                                small_windows=float(config.get("small_windows") or 0.0),
                                small_area=int(config.get("small_area") or 64), **geometric_augmentation(config),
                                **common)
    val_root = _root(config, "val_root")
    if config.get("val_clip_len"):
        common = {**common, "clip_len": int(config["val_clip_len"])}
    val_ds = VideoClipDataset(find_sequences(val_root), train=False, **common) if val_root else None
    return train_ds, val_ds


def geometric_augmentation(config: Mapping[str, Any]) -> Dict[str, float]:
    """The training dataset's flip / affine keys of a config (0: off)."""
    return {k: float(config.get(k) or 0.0) for k in ("hflip", "affine_degrees", "affine_shear")}


def forward(model, batch):
    return model(batch)


def loss(outputs, batch, config) -> torch.Tensor:
    from .loss import multistep_loss

    return multistep_loss(outputs, batch["masks"], config.get("loss_weights"))["loss"]


@torch.no_grad()
def metrics(outputs, batch, config) -> Dict[str, float]:
    """Mean IoU of the propagated frames (all but the prompted first one;
    the prompted frame itself for single-frame clips) at the model's
    resolution: cheap, for checkpoint selection; ``evaluate`` measures J&F at
    the video's resolution with the streaming engine."""
    target = batch["masks"] > 0
    ious, seen = [], []
    for t in range(1 if len(outputs) > 1 else 0, len(outputs)):
        pred = outputs[t]["pred_masks_high_res"][:, 0] > 0
        inter = (pred & target[t]).flatten(1).sum(-1).float()
        union = (pred | target[t]).flatten(1).sum(-1).float()
        ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
        seen.append(union > 0)
    if not ious:
        return {"iou": float("nan"), "mean_iou": float("nan")}
    iou, seen_ = torch.stack(ious), torch.stack(seen)  # [frames, objects]
    # the held-out score's mean IoU per object: only frames where object or prediction is non-empty
    # (a model that drops its object early is not rewarded for the empty frames after it left)
    n = seen_.sum(0)
    per_object = (iou * seen_).sum(0)[n > 0] / n[n > 0]
    return {"iou": float(iou.mean()), "mean_iou": float(per_object.mean()) if len(per_object) else 1.0}


def _evaluate(model, data, config, progress=None, cancel=None):
    from .evaluate import evaluate_method

    return evaluate_method(model, data, config, progress=progress, cancel=cancel)


SPEC = register_method(MethodSpec(
    name="sam2",
    build_model=build_from_config,
    build_datasets=build_datasets,
    loss=loss,
    metrics=metrics,
    forward=forward,
    default_config=DEFAULT_CONFIG,
    monitor="val_iou",
    monitor_mode="max",
    collate_fn=None,
    evaluate=_evaluate,
    base_weights_key="base_weights",
    description="SAM 2 through its video memory (SAM2's multi-step loss) on clips with per-frame object masks",
    result_kind="objects",  # label maps of the objects the user prompted, numbered by the user
))


def _collate(items):
    from .data import collate_clips

    return collate_clips(items)


SPEC.collate_fn = _collate
