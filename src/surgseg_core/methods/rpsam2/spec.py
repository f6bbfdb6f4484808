"""The "rpsam2" method: train RP-SAM2's shift block on a frozen SAM2
(``surgseg train rpsam2``), score it with the paper's Table-1 protocol
(``surgseg evaluate rpsam2``) and make pseudo masks from clicks
(``surgseg predict rpsam2``)."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from ...errors import ConfigError
from ...training.method import MethodSpec, register_method
from .loss import THETA, WEIGHTS
from .train import TRAIN_DEFAULTS

DEFAULT_CONFIG: Dict[str, Any] = {
    # base SAM2 (frozen): any config/size and any registered variant
    "sam2_config": "sam2.1_hiera_tiny",
    "base_weights": None,          # registered name or file; None: random init (say so in results)
    "base_variant": None,          # e.g. "f2paseg"
    "image_size": None,            # processing resolution; None: the config's
    # shift block (paper: 6 layers, s_x = s_y = 0.1)
    "shift_layers": 6,
    "shift_heads": 8,
    "shift_mlp_dim": 2048,
    "scale_init": 0.1,
    "image_pos_init": "sam",       # "sam": SAM2's dense PE as the start of i_pos; "random"
    "shift_points": "first",       # first | positive | all | none (inference; see model.py)
    # loss (paper: 1.0 / 0.1 / 1.0, theta 15)
    "loss_weights": dict(WEIGHTS),
    "theta": THETA,
    # candidates / clicks / feature cache
    **TRAIN_DEFAULTS,
    # data
    "train_root": None,
    "val_root": None,
    "data_format": "auto",         # auto | image_mask | supervisely | coco | endovis
    "class_names": None,           # image_mask: {index: name}
    "image_root": None,            # coco: folder of the images if not next to the json
    "min_area": 4,                 # objects smaller than this at the model resolution are skipped
    # optimisation (paper: lr 1e-4, batch 4)
    "lr": 1e-4,
    "batch_size": 4,
    "epochs": 50,
    "weight_decay": 0.01,
    "scheduler": "none",
    "checkpoint_trainable_only": True,
    # evaluation / prediction
    "eval_seeds": 10,
    "eval_max_frames": None,
    "points": None,                # predict: clicks CSV / JSON
}


def build_from_config(config: Mapping[str, Any]) -> torch.nn.Module:
    from .model import build_rpsam2

    return build_rpsam2(config)


def _root(config: Mapping[str, Any], key: str):
    root = config.get(key) or (config.get("data_root") if key == "train_root" else None)
    if key == "train_root" and not root:
        raise ConfigError("rpsam2: set train_root (frames with instrument masks), e.g. --set train_root=data/train")
    return root


def _image_size(config: Mapping[str, Any]) -> int:
    size = config.get("image_size")
    if size not in (None, "", 0):
        return int(size)
    from ...sam2_engine.build import compose_config
    from ...weights import OFFICIAL

    name = str(config.get("sam2_config") or DEFAULT_CONFIG["sam2_config"])
    name = OFFICIAL[name].config if name in OFFICIAL else name
    return int(compose_config(name).model.image_size)


def build_datasets(config: Mapping[str, Any]):
    from .data import InstanceFrames, read_samples

    size = _image_size(config)
    opts = dict(class_names=config.get("class_names"), image_root=config.get("image_root"))
    fmt = str(config.get("data_format", "auto"))
    train = InstanceFrames(read_samples(_root(config, "train_root"), fmt, **opts), size,
                           min_area=int(config.get("min_area", 4)))
    val_root = _root(config, "val_root")
    val = InstanceFrames(read_samples(val_root, fmt, **opts), size, min_area=int(config.get("min_area", 4))) \
        if val_root else None
    return train, val


def forward(model, batch):
    return model(batch)


def loss(outputs, batch, config) -> torch.Tensor:
    from .loss import compound_loss

    return compound_loss(outputs, config.get("loss_weights"), float(config.get("theta", THETA)))["loss"]


@torch.no_grad()
def metrics(outputs, batch, config) -> Dict[str, float]:
    """Dice of the refined and of the plain clicks' masks (decoder resolution),
    the share of refined clicks inside their object, the mean shift (px)."""
    from .loss import hard_dice, sample_mask

    if outputs.get("empty"):
        return {}
    target = outputs["target_low"] > 0.5
    res = {"dice": float(hard_dice(outputs["logits"] > 0, target).mean()),
           "inside": float((sample_mask(outputs["target"], outputs["points"]) >= 0.5).float().mean()),
           "shift_px": float((outputs["points"] - outputs["orig_points"]).norm(dim=-1).mean())}
    if "logits_plain" in outputs:
        res["dice_plain"] = float(hard_dice(outputs["logits_plain"] > 0, target).mean())
    return res


def _evaluate(model, data, config, progress=None, cancel=None):
    from .evaluate import evaluate_method

    return evaluate_method(model, data, config, progress=progress, cancel=cancel)


def _predict(model, inputs, out_dir, config, progress=None, cancel=None):
    from .predict import predict_method

    return predict_method(model, inputs, out_dir, config, progress=progress, cancel=cancel)


def _collate(items):
    from .data import collate

    return collate(items)


def _param_groups(model, config):
    # only the block trains: one group, no decay on positional embeddings / scales / norms
    decay, no_decay = [], []
    for name, p in model.shift.named_parameters():
        (no_decay if p.ndim < 2 or name in ("point_pos", "image_pos") else decay).append(p)
    return [{"params": decay, "weight_decay": float(config.get("weight_decay", 0.01))},
            {"params": no_decay, "weight_decay": 0.0}]


SPEC = register_method(MethodSpec(
    name="rpsam2",
    build_model=build_from_config,
    build_datasets=build_datasets,
    loss=loss,
    metrics=metrics,
    forward=forward,
    default_config=DEFAULT_CONFIG,
    monitor="val_dice",
    monitor_mode="max",
    collate_fn=_collate,
    evaluate=_evaluate,
    predict=_predict,
    base_weights_key="base_weights",
    result_kind="objects",  # one mask per clicked instrument
    description="RP-SAM2: a shift block that refines clicks on a frozen SAM2 (Dice + L_dist + L_out)",
))
