"""Coarse and refinement networks (segmentation_models_pytorch U-Nets).

Coarse network (paper sec. 2.1, after MFCNet): a clip of 2k+1 RGB frames
centred on t -> one heatmap per landmark type for frame t. Temporal fusion is
EARLY fusion: each frame is ImageNet-normalised and the frames are stacked
along the channel axis (3 (2k+1) input channels, oldest first), so the
encoder's first convolution sees all frames at once and motion cues (the
moving jaw, the tool against the panning tissue) are learnt from the first
layer on. With ImageNet encoder weights smp adapts the first convolution to
the channel count; the rest of the encoder is shared as usual.

Refinement network (sec. 2.2-2.3): F(I_t, H^c, M^c). The centre frame (3
channels), the coarse heatmaps (clamped to 0..1, no gradient into the coarse
network) and the mask prior (1 channel, omitted for "refine without prior")
are fused at the input (channel concatenation into the encoder); the U-Net
decoder's last feature map is the shared refinement feature, read by the
keypoint head (refined heatmaps) and, when ``aux_weight > 0``, by the
auxiliary mask head predicting M^c (not attached to the keypoint head).

Heatmap outputs are linear (regression targets in 0..1); the auxiliary mask
output is a sigmoid (M^c is a probability).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from . import LANDMARK_TYPES

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("coarse", "direct", "refine")


def _unet(encoder: str, encoder_weights: Optional[str], in_channels: int, classes: int, depth: int,
          decoder_channels: Optional[Sequence[int]]):
    import segmentation_models_pytorch as smp

    if encoder_weights in ("", "none", "None", "random"):
        encoder_weights = None
    channels = list(decoder_channels) if decoder_channels else [256, 128, 64, 32, 16][5 - int(depth):]
    kwargs = dict(encoder_name=encoder, in_channels=int(in_channels), classes=int(classes),
                  encoder_depth=int(depth), decoder_channels=channels)
    try:
        net = smp.Unet(encoder_weights=encoder_weights, **kwargs)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"cannot build a U-Net with encoder {encoder!r}: {exc}") from None
    except Exception as exc:  # offline: download errors come in many types
        if encoder_weights is None:
            raise
        msg = (f"could not load {encoder_weights} weights for encoder {encoder!r} ({type(exc).__name__}: {exc}); "
               "the encoder starts from RANDOM weights. Set encoder_weights=null to silence this.")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        net = smp.Unet(encoder_weights=None, **kwargs)
    return _drop_unused_stages(net, int(depth))


def _drop_unused_stages(net: nn.Module, depth: int) -> nn.Module:
    """smp keeps a ResNet's deeper stages when ``encoder_depth`` < 5 though
    its forward never runs them: at depth 3, layer3 and layer4 are 10.5 M
    of ResNet18's 11.2 M parameters, saved (untrained) in every checkpoint.
    They become empty Identity modules (the encoder's stage list still
    names them)."""
    enc = net.encoder
    for name in ("layer1", "layer2", "layer3", "layer4")[max(depth - 1, 0):]:
        if isinstance(getattr(enc, name, None), nn.Module):
            setattr(enc, name, nn.Identity())
    return net


class _Normalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in 0..1
        return (rgb - self.mean) / self.std


class CoarseNet(nn.Module):
    """(B, T, 3, H, W) clip in 0..1 -> (B, C, H, W) heatmaps for the centre frame."""

    def __init__(self, k: int, encoder: str = "resnet18", encoder_weights: Optional[str] = "imagenet",
                 encoder_depth: int = 4, decoder_channels: Optional[Sequence[int]] = None,
                 n_types: int = len(LANDMARK_TYPES)) -> None:
        super().__init__()
        self.k = int(k)
        self.norm = _Normalise()
        self.net = _unet(encoder, encoder_weights, 3 * (2 * self.k + 1), n_types, encoder_depth, decoder_channels)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = clip.shape
        if t != 2 * self.k + 1 or c != 3:
            raise ConfigError(f"coarse network expects (B, {2 * self.k + 1}, 3, H, W) clips, got {tuple(clip.shape)}")
        x = self.norm(clip.reshape(b * t, c, h, w)).reshape(b, t * c, h, w)  # early fusion
        return self.net(x)


class RefineNet(nn.Module):
    """F(I_t, H^c, M^c) -> refined heatmaps (+ auxiliary mask)."""

    def __init__(self, use_prior: bool, aux: bool, encoder: str = "resnet18",
                 encoder_weights: Optional[str] = "imagenet", encoder_depth: int = 4,
                 decoder_channels: Optional[Sequence[int]] = None, n_types: int = len(LANDMARK_TYPES)) -> None:
        super().__init__()
        self.use_prior, self.n_types = bool(use_prior), int(n_types)
        self.norm = _Normalise()
        in_ch = 3 + self.n_types + (1 if self.use_prior else 0)
        self.net = _unet(encoder, encoder_weights, in_ch, n_types, encoder_depth, decoder_channels)
        feat = self.net.segmentation_head[0].in_channels
        self.aux_head = nn.Conv2d(feat, 1, kernel_size=3, padding=1) if aux else None

    def forward(self, image: torch.Tensor, coarse: torch.Tensor, prior: Optional[torch.Tensor] = None):
        parts = [self.norm(image), coarse.detach().clamp(0.0, 1.0)]
        if self.use_prior:
            if prior is None:
                raise ConfigError("this refinement network takes a mask prior; none was given")
            parts.append(prior.float())
        x = torch.cat(parts, 1)
        shared = self.net.decoder(self.net.encoder(x))  # the shared refinement feature
        heat = self.net.segmentation_head(shared)
        aux = torch.sigmoid(self.aux_head(shared)) if self.aux_head is not None else None
        return heat, aux


class ToolLandmarkModel(nn.Module):
    """The method's model: ``coarse`` always, ``refine`` in the refinement
    stage (the coarse part frozen there). ``forward(clip, prior)`` returns
    {"coarse": H^c, "refined": H^r or None, "aux": M_hat or None}."""

    def __init__(self, stage: str, coarse: CoarseNet, refine: Optional[RefineNet] = None) -> None:
        super().__init__()
        self.stage = stage
        self.coarse = coarse
        self.refine = refine

    @property
    def needs_prior(self) -> bool:
        return self.refine is not None and self.refine.use_prior

    def forward(self, clip: torch.Tensor, prior: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        if self.refine is not None and not any(p.requires_grad for p in self.coarse.parameters()):
            with torch.no_grad():
                coarse = self.coarse(clip)
        else:
            coarse = self.coarse(clip)
        out: Dict[str, Any] = {"coarse": coarse, "refined": None, "aux": None}
        if self.refine is not None:
            centre = clip[:, self.coarse.k]
            out["refined"], out["aux"] = self.refine(centre, coarse, prior)
        return out

    def final(self, out: Mapping[str, Any]) -> torch.Tensor:
        """The heatmaps this model reports: refined when it has a refinement stage."""
        return out["refined"] if out.get("refined") is not None else out["coarse"]


def _arch(config: Mapping[str, Any], prefix: str) -> dict:
    def get(key, default):  # refine_encoder etc. fall back to the coarse network's setting
        value = config.get(f"{prefix}{key}") if prefix else None
        return config.get(key, default) if value is None else value

    return dict(encoder=get("encoder", "resnet18"), encoder_weights=get("encoder_weights", "imagenet"),
                encoder_depth=int(get("encoder_depth", 4)), decoder_channels=get("decoder_channels", None))


def check_input_size(config: Mapping[str, Any]) -> None:
    w, h = int(config["input_width"]), int(config["input_height"])
    div = 2 ** max(int(config.get("encoder_depth", 4)), int(config.get("refine_encoder_depth") or 0))
    if w <= 0 or h <= 0 or w % div or h % div:
        raise ConfigError(f"input size {w}x{h} must be positive multiples of {div} for encoder depth "
                          f"{int(config.get('encoder_depth', 4))}")


def build_from_config(config: Mapping[str, Any]) -> ToolLandmarkModel:
    stage = str(config.get("stage", "coarse"))
    if stage not in STAGES:
        raise ConfigError(f"tools: stage must be one of {', '.join(STAGES)}, got {stage!r}")
    k = int(config.get("k", 2))
    if k < 0:
        raise ConfigError(f"tools: k (frames either side) must be >= 0, got {k}")
    check_input_size(config)
    coarse = CoarseNet(k, **_arch(config, ""))
    if stage != "refine":
        return ToolLandmarkModel(stage, coarse)
    # the coarse network comes from init_weights and stays frozen; its
    # ImageNet weights would only be overwritten
    coarse_frozen = CoarseNet(k, **{**_arch(config, ""), "encoder_weights": None})
    for p in coarse_frozen.parameters():
        p.requires_grad_(False)
    refine = RefineNet(bool(config.get("use_prior", True)), float(config.get("aux_weight", 0.0)) > 0,
                       **_arch(config, "refine_"))
    return ToolLandmarkModel(stage, coarse_frozen, refine)


__all__ = ["CoarseNet", "RefineNet", "ToolLandmarkModel", "build_from_config", "STAGES"]
