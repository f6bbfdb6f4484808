"""The "liver" method for the shared trainer, CLI and widgets."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np
import torch

from ...errors import ConfigError
from ...training.method import MethodSpec, register_method
from . import CLASS_COLOURS, CLASS_NAMES, LANDMARK_CLASSES, NUM_CLASSES
from .class_weights import class_weights_from_counts, count_class_pixels
from .data import LiverDataset, find_samples
from .loss import LossWeights, composite_loss
from .model import build_from_config, input_size

DEFAULT_CONFIG: Dict[str, Any] = {
    # model (paper: ResNet34 encoder, ImageNet weights, 416 x 320)
    "arch": "unet",
    "encoder": "resnet34",
    "encoder_weights": "imagenet",
    "encoder_depth": 5,
    "decoder_channels": None,
    "input_width": 416,
    "input_height": 320,
    # data
    "train_root": None,
    "val_root": None,
    "dataset_format": "auto",   # auto | generic | l3d | p2ilf | colour
    "line_thickness": 12.0,      # curve thickness in ORIGINAL image pixels
    "flip": True,                # random horizontal + vertical flips (training only)
    "class_weights": "auto",     # "auto" (paper eq. 1 over the training masks) or 4 numbers
    # loss (eq. 2); stage-1 default = the paper's best candidate (UNet, wCE only)
    "loss_alpha": 1.0,
    "loss_beta": 0.0,
    "loss_gamma": 0.0,
    "loss_delta": 0.0,
    "huber_delta": 1.0,
    "dice_smooth": 1.0,
    "ftl_alpha": 0.7,
    "ftl_beta": 0.3,
    "ftl_exponent": 0.75,
    # schedule (paper sec. 4.3)
    "lr": 1e-4,
    "batch_size": 8,
    "epochs": 100,
    "scheduler": "plateau",
    "plateau_factor": 0.2,
    "plateau_patience": 3,
    "early_stopping_patience": 7,
    # evaluation / prediction
    "d_max": 10.0,
    "eval_thickness": 12.0,      # px at the original resolution, prediction and truth
    "postprocess": True,
    "stage1_checkpoint": None,   # evaluate: adds the "initial training" row
}


def _train_root(config: Mapping[str, Any]):
    root = config.get("train_root") or config.get("data_root")
    if not root:
        raise ConfigError("liver: set train_root (a dataset folder), e.g. --set train_root=data/l3d/train")
    return root


def build_datasets(config: Mapping[str, Any]):
    size = input_size(config)
    fmt = config.get("dataset_format", "auto")
    thick = float(config.get("line_thickness", 12.0))
    train_ds = LiverDataset(find_samples(_train_root(config), fmt), size, flip=bool(config.get("flip", True)),
                            line_thickness=thick)
    cw = config.get("class_weights", "auto")
    if cw in (None, "auto"):
        weights = class_weights_from_counts(count_class_pixels(train_ds.masks(), NUM_CLASSES))
    else:
        weights = np.asarray(cw, dtype=np.float64)
        if weights.shape != (NUM_CLASSES,) or not np.all(weights > 0):
            raise ConfigError(f"class_weights must be 'auto' or {NUM_CLASSES} positive numbers, got {cw!r}")
    train_ds.class_weights = torch.as_tensor(weights, dtype=torch.float32)
    val_ds = None
    if config.get("val_root"):
        val_ds = LiverDataset(find_samples(config["val_root"], fmt), size, flip=False, line_thickness=thick)
        val_ds.class_weights = train_ds.class_weights  # val loss with the training weights
    return train_ds, val_ds


def loss(outputs: torch.Tensor, batch: Mapping[str, Any], config: Mapping[str, Any]) -> torch.Tensor:
    cw = batch.get("class_weights")
    return composite_loss(
        outputs, batch["mask"], LossWeights.from_config(config), None if cw is None else cw[0],
        huber_delta=float(config.get("huber_delta", 1.0)), dice_smooth=float(config.get("dice_smooth", 1.0)),
        ftl_alpha=float(config.get("ftl_alpha", 0.7)), ftl_beta=float(config.get("ftl_beta", 0.3)),
        ftl_exponent=float(config.get("ftl_exponent", 0.75)),
    )


@torch.no_grad()
def metrics(outputs: torch.Tensor, batch: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, float]:
    """Pixel Dice and precision per landmark class over the batch at the
    network resolution (cheap, for checkpoint selection; ``evaluate`` gives
    the paper's metrics). A class absent from both prediction and truth of
    the batch counts as Dice 1 so batch averages stay defined."""
    pred = outputs.argmax(1)
    target = batch["mask"]
    out: Dict[str, float] = {}
    dices, precs = [], []
    for cls in LANDMARK_CLASSES:
        p, g = pred == cls, target == cls
        inter, ps, gs = float((p & g).sum()), float(p.sum()), float(g.sum())
        d = 1.0 if ps + gs == 0 else 2 * inter / (ps + gs)
        pr = 1.0 if ps == 0 and gs == 0 else (inter / ps if ps else 0.0)
        out[f"dice_{CLASS_NAMES[cls]}"] = d
        dices.append(d)
        precs.append(pr)
    out["dice"] = float(np.mean(dices))
    out["precision"] = float(np.mean(precs))
    return out


def _predict(model, inputs, out_dir, config, progress=None, cancel=None):
    from .predict import predict_inputs

    return predict_inputs(model, inputs, out_dir, config, progress=progress, cancel=cancel)


def _evaluate(model, data, config, progress=None, cancel=None):
    from .evaluate import evaluate_method

    return evaluate_method(model, data, config, progress=progress, cancel=cancel)


def _rasterize_curves(curves, shape, thickness: float = 1.0):
    from .rasterize import rasterize_curves

    return rasterize_curves({int(k): v for k, v in curves.items()}, shape, thickness)


def _train_two_stage(stage1_cfg, stage2_cfg, run_dir, **kwargs):
    from .train import train_two_stage

    return train_two_stage(stage1_cfg, stage2_cfg, run_dir, **kwargs)


SPEC = register_method(MethodSpec(
    name="liver",
    build_model=build_from_config,
    build_datasets=build_datasets,
    loss=loss,
    metrics=metrics,
    default_config=DEFAULT_CONFIG,
    monitor="val_dice",
    monitor_mode="max",
    predict=_predict,
    evaluate=_evaluate,
    description="Liver landmarks (silhouette, ridge, falciform ligament): smp U-Net/U-Net++/DeepLabV3+ with "
                "the SLiPPA loss, two-stage training and post-processing",
    class_names=dict(CLASS_NAMES),
    class_colours=dict(CLASS_COLOURS),
    result_kind="curves",
    rasterize_curves=_rasterize_curves,
    train_two_stage=_train_two_stage,
))
