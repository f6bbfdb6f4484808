"""``surgseg train f2paseg``: F2PASeg fine-tuned on the SAM2 platform's clip
training (``methods.sam2``: the differentiable clip forward through SAM2's
memory, SAM2's multi-step loss, the clip dataset) with the shared trainer
(resume, torchrun, per-module LR, layer decay, trainable-only checkpoints).

What F2PASeg adds on top of ``surgseg train sam2``:
  * the model is the "f2paseg" SAM2 variant (fusion module in the mask
    decoder), the mask decoder frozen except the fusion module;
  * each anatomy class is one object (object id = class id), up to 6 per clip;
  * box prompts (jittered in training, exact in validation) on the clip's
    frame 0 and every ``box_every`` frames after it, as at inference;
    SAM2's clip forward prompts all objects of a frame together, so a later
    frame is prompted only when every object of the clip is visible on it
    (the streaming engine, used by ``evaluate``, prompts per class);
  * prompt partitioning in the training forward (``keep_recent_prompt_frames``),
    the same ``select_memory`` rule as the engine;
  * data from the PAS layout, generic frame/mask folders or CholecSeg8k
    (``data.read_*``), optionally with the instrument overlay (``augment``).

With the paper's 10-frame clips and a box every 10 frames a training clip
has one prompted frame (its first); longer clips (``clip_len``) see more.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError, DatasetError
from ...training.method import MethodSpec, register_method
from ..sam2.data import VideoClipDataset, collate_clips
from ..sam2.model import SAM2ClipModel, freeze_modules
from ..sam2.spec import geometric_augmentation
from .classes import IGNORE, ClassSet, get_class_set
from .data import AnnotatedClip, find_cholecseg8k_clips, read_generic, read_pas
from .spec import DEFAULT_CONFIG, build_from_config, check_keys, class_set_of

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- data
def read_clips(root, fmt: str, split: Optional[str], class_set: ClassSet) -> List[AnnotatedClip]:
    """Annotated clips of a dataset folder.

    ``pas``: ``root/{split}/{image,mask}/case_XXXX`` (or ``root`` itself a
    split folder holding ``image/`` and ``mask/``); ``generic``: ``root``
    holds ``masks/`` and ``frames/`` (or ``images/``, or one video file);
    ``cholecseg8k``: every clip folder under ``root``."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"f2paseg: dataset folder not found: {root}")
    if fmt == "pas":
        if split and (root / split / "image").is_dir():
            return read_pas(root, split, class_set)
        if (root / "image").is_dir() and (root / "mask").is_dir():
            return read_pas(root.parent, root.name, class_set)
        return read_pas(root, split or "train", class_set)  # its error names the expected layout
    if fmt == "generic":
        masks = root / "masks"
        frames = next((root / d for d in ("frames", "images") if (root / d).is_dir()), None)
        if frames is None:
            from ..sam2.data import VIDEO_SUFFIXES

            videos = [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
            if len(videos) != 1:
                raise DatasetError(f"{root}: the generic layout is masks/ next to frames/ (or images/, or one video "
                                   f"file); found {len(videos)} videos and no frame folder")
            frames = videos[0]
        return read_generic(frames, masks, class_set)
    if fmt == "cholecseg8k":
        return find_cholecseg8k_clips(root, class_set=class_set)
    raise ConfigError(f"f2paseg: dataset_format must be pas, generic or cholecseg8k, got {fmt!r}")


class _Run:
    """Consecutive annotated frames ``start .. start + n - 1`` of a clip: the
    frame/mask reader ``VideoClipDataset`` reads."""

    def __init__(self, clip: AnnotatedClip, start: int, n: int) -> None:
        self.clip, self.start, self.n = clip, int(start), int(n)
        self.name = clip.name if (start, n) == (0, len(clip)) else f"{clip.name}[{start}:{start + n}]"

    def __len__(self) -> int:
        return self.n

    def frame(self, i: int) -> np.ndarray:
        return self.clip.frame(self.start + i)

    def mask(self, i: int) -> np.ndarray:
        return self.clip.mask(self.start + i)


def annotated_runs(clip: AnnotatedClip) -> List[_Run]:
    """The clip's runs of consecutive annotated frames (SAM2's loss needs a
    mask on every frame of a training clip)."""
    runs, start, prev = [], None, None
    for t in clip.annotated:
        if start is None or t != prev + 1:
            if start is not None:
                runs.append(_Run(clip, start, prev - start + 1))
            start = t
        prev = t
    if start is not None:
        runs.append(_Run(clip, start, prev - start + 1))
    return runs


class AnnotatedClipDataset(VideoClipDataset):
    """SAM2's clip dataset (random start and stride, objects present on the
    first frame, up to ``max_objects``) over annotated clips: one object per
    class of ``class_set`` (the object id is the class id); unlabelled
    (IGNORE) pixels are background of every object."""

    def __init__(self, clips: Sequence[AnnotatedClip], class_set: ClassSet, **kwargs) -> None:
        runs = [r for c in clips for r in annotated_runs(c)]
        if not runs:
            raise DatasetError("f2paseg: no annotated frames in the given clips")
        self.class_ids = np.array(class_set.ids)
        super().__init__(runs, **kwargs)
        self.readers = runs  # frame(i) / mask(i), read lazily

    def _objects(self, mask: np.ndarray) -> List[int]:
        ids, counts = np.unique(mask, return_counts=True)
        return [int(i) for i, c in zip(ids, counts) if i in self.class_ids and c >= self.min_area]


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """``collate_clips`` plus the objects' class ids (``object_ids`` [O])."""
    batch = collate_clips(items)
    batch["object_ids"] = torch.cat([it["object_ids"] for it in items])
    return batch


def _size(config: Mapping[str, Any]) -> int:
    s = config.get("image_size")
    if s in (None, "", 0):
        from ...sam2_engine.build import compose_config

        return int(compose_config(str(config["sam2_config"])).model.image_size)
    return int(s)


def _instrument_donors(config: Mapping[str, Any]):
    from .augment import InstrumentDonor
    from .classes import CHOLECSEG8K, get_class_set

    root = config.get("instrument_root")
    if not root:
        raise ConfigError("f2paseg: augment_instruments needs instrument_root (clips with instrument masks)")
    fmt = str(config.get("instrument_format") or "generic")
    if fmt == "cholecseg8k":
        return [InstrumentDonor.from_clip(c, CHOLECSEG8K.instrument_ids) for c in find_cholecseg8k_clips(root)]
    if fmt != "generic":
        raise ConfigError(f"f2paseg: instrument_format must be generic or cholecseg8k, got {fmt!r}")
    anything = get_class_set([{"id": i, "name": f"instrument {i}"} for i in range(1, IGNORE)])
    return [InstrumentDonor.from_clip(c, anything.ids) for c in read_clips(root, "generic", None, anything)]


def build_datasets(config: Mapping[str, Any]):
    check_keys(config)
    cs = class_set_of(config)
    fmt = str(config.get("dataset_format") or "pas")
    train_root = config.get("train_root") or config.get("data_root")
    if not train_root:
        raise ConfigError("f2paseg: set train_root (a PAS dataset root, or clips in the generic / CholecSeg8k "
                          "layout), e.g. --set train_root=data/PAS")
    train_clips = read_clips(train_root, fmt, config.get("train_split"), cs)
    if config.get("augment_instruments"):
        from .augment import augment_rare_clips, class_distribution, format_distribution

        extra = augment_rare_clips(train_clips, _instrument_donors(config), hidden_label=int(config["hidden_label"]),
                                   rng=np.random.default_rng(int(config.get("seed") or 0)))
        log.info("instrument overlay: %d augmented clips\n%s", len(extra), format_distribution(
            class_distribution(train_clips, cs), class_distribution(train_clips + extra, cs), cs))
        train_clips = train_clips + extra
    val_root, val_split = config.get("val_root"), config.get("val_split")
    val_clips = None
    if val_root:
        val_clips = read_clips(val_root, fmt, val_split, cs)
    elif fmt == "pas" and val_split and (Path(train_root) / val_split / "image").is_dir():
        val_clips = read_pas(train_root, val_split, cs)
    common = dict(image_size=_size(config), clip_len=int(config["clip_len"]), max_objects=int(config["max_objects"]),
                  seed=int(config.get("seed") or 0))
    train_ds = AnnotatedClipDataset(train_clips, cs, train=True, max_stride=int(config.get("max_stride") or 1),
                                    **geometric_augmentation(config), **common)
    val_ds = AnnotatedClipDataset(val_clips, cs, train=False, **common) if val_clips else None
    return train_ds, val_ds


# ------------------------------------------------------------------ model
class F2PASegClipModel(SAM2ClipModel):
    """SAM2's trainable clip model with F2PASeg's prompts: a box per object
    on frame 0 and on every ``box_every``-th frame after it where all objects
    are visible (jittered by ``box_noise`` in training, exact otherwise), and
    prompt partitioning in the memory selection."""

    def __init__(self, sam, *, box_every: int = 10, box_jitter: float = 0.1,
                 keep_recent_prompt_frames: Optional[int] = 2) -> None:
        super().__init__(sam, prob_box=1.0, prob_point=0.0, box_noise=box_jitter,
                         keep_recent_prompt_frames=keep_recent_prompt_frames or None)
        if int(box_every) < 1:
            raise ConfigError(f"f2paseg: box_every must be >= 1, got {box_every}")
        self.box_every = int(box_every)

    def prompt_frames(self, masks: torch.Tensor) -> List[int]:
        """Frames of a clip (masks [T, O, S, S]) that get box prompts."""
        visible = masks.flatten(2).any(-1).all(-1)  # [T]: every object visible
        return [0] + [t for t in range(self.box_every, int(masks.shape[0]), self.box_every) if bool(visible[t])]

    def sample_prompts(self, masks: torch.Tensor) -> Dict[int, Dict[str, torch.Tensor]]:
        from ..sam2.clip import box_prompt

        noise = self.box_noise if self.training else 0.0
        return {t: box_prompt(masks[t], noise=noise) for t in self.prompt_frames(masks)}


def build_model(config: Mapping[str, Any]) -> torch.nn.Module:
    sam = build_from_config(config, device="cpu")
    model = F2PASegClipModel(sam, box_every=int(config["box_every"]), box_jitter=float(config["box_jitter"]),
                             keep_recent_prompt_frames=int(config.get("keep_recent_prompt_frames") or 0))
    freeze = config.get("freeze") or []
    freeze_modules(model, [freeze] if isinstance(freeze, str) else list(freeze))
    # the base model's identity, written into trainable-only checkpoints
    model.surgseg_base = {"name": getattr(sam, "surgseg_model_name", None),
                          "sha256": getattr(sam, "surgseg_checkpoint_sha256", None),
                          "config": getattr(sam, "surgseg_config_name", None)}
    return model


def forward(model, batch):
    return model(batch)


def loss(outputs, batch, config) -> torch.Tensor:
    from ..sam2.loss import multistep_loss

    return multistep_loss(outputs, batch["masks"], config.get("loss_weights"))["loss"]


@torch.no_grad()
def metrics(outputs, batch, config) -> Dict[str, float]:
    """Mean Dice and IoU of the objects on the frames without a prompt, at
    the model's resolution (frames where object and prediction are both
    empty are left out): cheap, for checkpoint selection; ``evaluate``
    scores label maps at the video's resolution with the streaming engine."""
    target = batch["masks"] > 0
    dice, iou = [], []
    for t, out in enumerate(outputs):
        if out.get("point_inputs") is not None or out.get("mask_inputs") is not None:
            continue  # a prompted frame
        pred = out["pred_masks_high_res"][:, 0] > 0
        inter = (pred & target[t]).flatten(1).sum(-1).float()
        p, g = pred.flatten(1).sum(-1).float(), target[t].flatten(1).sum(-1).float()
        keep = (p + g) > 0
        dice.append((2 * inter / (p + g).clamp(min=1))[keep])
        iou.append((inter / (p + g - inter).clamp(min=1))[keep])
    dice_all, iou_all = (torch.cat(dice), torch.cat(iou)) if dice else (torch.zeros(0), torch.zeros(0))
    if dice_all.numel() == 0:
        return {"dice": float("nan"), "iou": float("nan")}
    return {"dice": float(dice_all.mean()), "iou": float(iou_all.mean())}


def _evaluate(model, data, config, progress=None, cancel=None):
    from .evaluate import evaluate_method

    return evaluate_method(model, data, config, progress=progress, cancel=cancel)


SPEC = register_method(MethodSpec(
    name="f2paseg",
    build_model=build_model,
    build_datasets=build_datasets,
    loss=loss,
    metrics=metrics,
    forward=forward,
    default_config=dict(DEFAULT_CONFIG),
    monitor="val_dice",
    monitor_mode="max",
    collate_fn=collate,
    evaluate=_evaluate,
    base_weights_key="base_weights",
    # the default class set (PAS); a run with another class_set carries its own in its config
    class_names=get_class_set(DEFAULT_CONFIG["class_set"]).names(),
    class_colours=get_class_set(DEFAULT_CONFIG["class_set"]).colours(),
    result_kind="masks",
    description="F2PASeg: SAM2 with feature fusion (LoRA) and prompt partitioning, anatomy classes as objects, "
                "box prompts every 10 frames (pituitary anatomy, PAS layout)",
))
