"""Liver landmark networks: segmentation_models_pytorch Unet, UnetPlusPlus
and DeepLabV3Plus with a ResNet encoder (ResNet34 in the paper), 4 classes.

The model takes RGB in [0, 1] and applies the ImageNet normalisation itself,
so training, evaluation and prediction cannot disagree on preprocessing (the
reference code fed unnormalised BGR and brightened differently in training
and evaluation).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from . import NUM_CLASSES

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "deeplabv3plus": "DeepLabV3Plus"}


class LiverSegmenter(nn.Module):
    """ImageNet normalisation + an smp network; ``forward`` returns logits (B, 4, H, W)."""

    def __init__(self, net: nn.Module, arch: str, encoder: str) -> None:
        super().__init__()
        self.net = net
        self.arch, self.encoder = arch, encoder
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - self.mean) / self.std)


def _smp_class(arch: str):
    import segmentation_models_pytorch as smp

    key = str(arch).lower().replace("_", "").replace("-", "").replace("+", "plus")
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown liver architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return key, getattr(smp, ARCHITECTURES[key])


def build_liver_model(arch: str = "unet", encoder: str = "resnet34", encoder_weights: Optional[str] = "imagenet",
                      encoder_depth: int = 5, decoder_channels: Optional[Sequence[int]] = None,
                      num_classes: int = NUM_CLASSES) -> LiverSegmenter:
    """Build the network. ``encoder_weights="imagenet"`` downloads the
    pretrained encoder once (torch hub cache); when that fails (offline) the
    encoder starts from random weights and a warning says so (never silently)."""
    key, cls = _smp_class(arch)
    kwargs: dict = {"encoder_name": encoder, "classes": int(num_classes), "in_channels": 3}
    if key != "deeplabv3plus":
        kwargs["encoder_depth"] = int(encoder_depth)
        if decoder_channels:
            kwargs["decoder_channels"] = list(decoder_channels)
        elif int(encoder_depth) != 5:
            kwargs["decoder_channels"] = [256, 128, 64, 32, 16][5 - int(encoder_depth):]
    if encoder_weights in ("", "none", "None", "random"):
        encoder_weights = None
    try:
        net = cls(encoder_weights=encoder_weights, **kwargs)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"cannot build {ARCHITECTURES[key]} with encoder {encoder!r}: {exc}") from None
    except Exception as exc:  # download failures come in many types (URLError, HTTPError, OSError, hub errors)
        if encoder_weights is None:
            raise
        msg = (f"could not load {encoder_weights} weights for encoder {encoder!r} ({type(exc).__name__}: {exc}); "
               "the encoder starts from RANDOM weights - expect much worse results. Connect to the internet once "
               "(the weights are cached) or set encoder_weights=null to silence this.")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        net = cls(encoder_weights=None, **kwargs)
    return LiverSegmenter(net, key, encoder)


def build_from_config(config: Mapping[str, Any]) -> LiverSegmenter:
    check_input_size(config)
    return build_liver_model(
        arch=config.get("arch", "unet"), encoder=config.get("encoder", "resnet34"),
        encoder_weights=config.get("encoder_weights", "imagenet"),
        encoder_depth=int(config.get("encoder_depth", 5)), decoder_channels=config.get("decoder_channels"),
    )


def input_size(config: Mapping[str, Any]) -> tuple:
    return int(config.get("input_width", 416)), int(config.get("input_height", 320))


def check_input_size(config: Mapping[str, Any]) -> None:
    w, h = input_size(config)
    arch = str(config.get("arch", "unet")).lower()
    depth = 4 if "deeplab" in arch else int(config.get("encoder_depth", 5))
    div = 2 ** depth
    if w <= 0 or h <= 0 or w % div or h % div:
        raise ConfigError(
            f"input size {w}x{h} must be positive multiples of {div} for {arch} with encoder depth {depth} "
            f"(e.g. 416x320)"
        )
