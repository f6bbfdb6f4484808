"""RP-SAM2's shift block (paper sec. 2, eq. 1-2): it moves a click P to a
refined point P' using the frame's image embedding.

    p* = p + p_pos          (1 x C)      p = SAM2's prompt-encoder embedding of the click
    i* = i + i_pos          (h*w x C)    i = SAM2's image embedding (what the decoder sees)
    dp = L x [cross-attention(p*, i*) + MLP]   (point-to-image, L = 6 layers)
    P' = P + sigmoid(s_x, s_y) * tanh(delta(dp))          (eq. 2), delta: C -> 2

Coordinates in eq. 2 are normalised by the model's image side S (0..1), the
same units as L_dist's theta; the block returns the offset in those units
and :func:`apply_offset` adds ``offset * S`` in model pixels.

Choices the paper leaves open (all are constructor options):

* ``delta`` is zero-initialised (weight and bias), so an untrained block
  returns offset 0 exactly and RP-SAM2 equals SAM2 bit for bit. Gradients
  still reach ``delta`` from the first step and everything before it once
  ``delta`` is non-zero (LoRA's B = 0 convention).
* ``s_x, s_y`` start at 0.1 as the paper says: the token values, so the
  scale is sigmoid(0.1) = 0.525 of the image side, i.e. a click can move up
  to about 537 px per axis at 1024 px (134 px at 256 px) once tanh
  saturates. (An adaptation that reads "0.1" as sigmoid(s) = 0.1 would
  start at s = logit(0.1) = -2.197: at most 102 px at 1024 px; pass
  ``scale_init=-2.197`` for that.) The wide range makes the step size
  matter: on thin synthetic instruments at 128 px, lr 1e-3 threw the clicks
  out of the instruments within 5 Adam steps; the paper's 1e-4 did not.
* One layer = post-norm cross-attention (point tokens query the image
  tokens; SDPA, ``num_heads`` 8) + post-norm MLP (``mlp_dim`` 2048, ReLU),
  SAM's decoder block without its self-attention (each click is refined on
  its own: tokens never attend to each other, so several clicks can share
  one batch row).
* ``i_pos`` starts as a copy of SAM2's dense positional encoding
  (``prompt_encoder.get_dense_pe()``), which is how SAM2 places the click in
  ``p``, so queries and keys share a coordinate frame from the first step;
  it is then learned (``image_pos_init="random"``: ViT's trunc-normal 0.02).
  ``p_pos`` (1 x C, one vector for every click) starts trunc-normal 0.02.
* Inference folds each layer's key and value projections onto the click
  side (``sam2_engine.fast_heads.few_query_attention``: softmax(q W_k,h X^T) X W_v,h^T,
  the same arithmetic regrouped), so a frame needs only i* once (4 MB at
  1024 px) instead of six layers' keys and values (48 MB read per click):
  ``image_keys(..., folded=True)``, what a click session caches. Under a
  bf16 autocast (the engine's "bf16" precision) i* is stored in bf16 and
  :func:`folded_low_precision` runs the block: the products with i* and the
  MLP (12 of its 16 MB of click-side weights) in bf16, the click's own
  small projections, norms and residual stream in float32 (bf16 gains
  nothing on 256-wide vectors: those calls cost dispatch, not bytes), on
  CPU the MLP through oneDNN with weights packed once (a 256 x 2048 bf16
  GEMV, warm: 37 us instead of 60 us with ``F.linear``), and for one frame
  the two products with i* per layer through oneDNN too, i* packed once per
  frame in both layouts (4 MB at 1024 px; 62 + 59 us instead of 116 + 95 us
  a layer with ``torch.matmul``, measured 2026-12-05). Measured on this 2-core EPYC at
  1024 px: the block 3.7-4.5 ms instead of 4.9-5.8 ms (bf16 cast copy of the
  whole block), closer to float32 (max offset error 0.0035 vs 0.0052 of the
  image side).
* Size: with C = 256 and a 64 x 64 embedding (any SAM2 at 1024 px) the block
  has 8.94 M parameters (``count_parameters``), i_pos 1.05 M of them; the
  paper reports 12.1 M without saying how the layers are built.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...device import derived_from_weights, low_precision_dtype
from ...errors import ConfigError
from ...sam2_engine.fast_heads import few_query_attention
from ...sam2_engine.onednn_linear import onednn_linear

DEFAULT_LAYERS = 6
DEFAULT_HEADS = 8
DEFAULT_MLP_DIM = 2048
DEFAULT_SCALE_INIT = 0.1


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens on image tokens (eq. 1). The
    image side (``keys_values``) does not depend on the click, so inference
    computes it once per frame (``ShiftBlock.image_keys``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"rpsam2: embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def keys_values(self, image: torch.Tensor):
        return self._heads(self.k_proj(image)), self._heads(self.v_proj(image))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``k``, ``v``: this layer's keys and values (``keys_values``), or
        ``k`` = the image tokens i* and ``v`` None: the projections folded
        onto the query side (inference; same result up to rounding)."""
        if v is None:
            return few_query_attention(self, q, k, k)
        b, n, c = q.shape
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class PointToImageLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, k: torch.Tensor, v: Optional[torch.Tensor]) -> torch.Tensor:
        tokens = self.norm1(tokens + self.attn(tokens, k, v))
        return self.norm2(tokens + self.mlp(tokens))


class BlockKeys(NamedTuple):
    """The click-independent side of the block for a batch of frames:
    ``image`` = i* (B, h*w, C) and, unless folded, every layer's keys and
    values of it; ``packed``: for one frame folded in bf16 on a CPU, i*'s
    two products as oneDNN linears with i* packed once (:func:`_packed_image`)."""

    image: torch.Tensor
    per_layer: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]
    packed: Optional[Tuple[Any, Any]] = None

    @property
    def frames(self) -> int:
        return int(self.image.shape[0])


class ShiftBlock(nn.Module):
    """``forward(point_embed (B, N, C), image_embed (B, C, h, w))`` -> offsets
    (B, N, 2) in units of the image side (x, y); see the module docstring."""

    def __init__(
        self,
        dim: int,
        embed_hw: int,
        *,
        num_layers: int = DEFAULT_LAYERS,
        num_heads: int = DEFAULT_HEADS,
        mlp_dim: int = DEFAULT_MLP_DIM,
        scale_init: float = DEFAULT_SCALE_INIT,
        dense_pe: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"rpsam2: num_layers must be >= 1, got {num_layers}")
        self.dim, self.embed_hw = int(dim), int(embed_hw)
        self.point_pos = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.point_pos, std=0.02)
        self.image_pos = nn.Parameter(torch.zeros(1, embed_hw * embed_hw, dim))
        if dense_pe is not None:
            if tuple(dense_pe.shape[-3:]) != (dim, embed_hw, embed_hw):
                raise ConfigError(f"rpsam2: dense PE {tuple(dense_pe.shape)} does not fit ({dim}, {embed_hw}, {embed_hw})")
            with torch.no_grad():
                self.image_pos.copy_(dense_pe.reshape(dim, -1).t()[None])
        else:
            nn.init.trunc_normal_(self.image_pos, std=0.02)
        self.layers = nn.ModuleList(PointToImageLayer(dim, num_heads, mlp_dim) for _ in range(num_layers))
        self.delta = nn.Linear(dim, 2)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)
        self.scale = nn.Parameter(torch.full((2,), float(scale_init)))  # (s_x, s_y)

    def image_keys(self, image_embed: torch.Tensor, folded: Optional[bool] = None) -> BlockKeys:
        """i* = i + i_pos and (``folded`` False) every layer's keys and
        values of it: click-independent, so a click session computes them
        once per frame. ``folded`` (default: when no gradient is recorded):
        the layers fold their projections onto the click side instead."""
        b, c, h, w = image_embed.shape
        if c != self.dim or h * w != self.embed_hw ** 2:
            raise ConfigError(
                f"rpsam2: the shift block was built for {self.dim} x {self.embed_hw}x{self.embed_hw} image embeddings, "
                f"got {c} x {h}x{w} (another SAM2 size or processing resolution)"
            )
        if folded is None:
            folded = not torch.is_grad_enabled()
        if folded:
            dtype = low_precision_dtype(image_embed.device.type) or torch.float32
            image = image_embed.float().flatten(2).transpose(1, 2) + self.image_pos.float()
            image = image.to(dtype).contiguous()
            packed = _packed_image(image[0]) if b == 1 and dtype != torch.float32 else None
            return BlockKeys(image, None, packed)
        image = image_embed.flatten(2).transpose(1, 2) + self.image_pos  # i* (B, hw, C)
        return BlockKeys(image, [layer.attn.keys_values(image) for layer in self.layers])

    def forward(self, point_embed: torch.Tensor, image_embed: Optional[torch.Tensor] = None, *,
                keys: Optional[BlockKeys] = None, state: Optional[tuple] = None) -> torch.Tensor:
        """``state``: this block's current ``device.parameter_state`` when the
        caller has just taken it (saves taking it again per click)."""
        if keys is None:
            keys = self.image_keys(image_embed)
        if keys.per_layer is None and keys.image.dtype != torch.float32:  # folded, low precision
            return folded_low_precision(self, point_embed, keys.image, state, keys.packed)
        tokens = point_embed + self.point_pos  # p* (B, N, C)
        per_layer = keys.per_layer or [(keys.image, None)] * len(self.layers)
        for layer, (k, v) in zip(self.layers, per_layer):
            tokens = layer(tokens, k, v)
        return torch.sigmoid(self.scale) * torch.tanh(self.delta(tokens))  # eq. 2's offset


def _mlp_linear(weight: torch.Tensor, bias: torch.Tensor, relu: bool):
    """``x -> [relu](x W^T + b)`` in ``weight``'s dtype: on CPU through
    oneDNN with the weight packed once (:func:`onednn_linear`), else (other
    devices, a torch without the op) ``F.linear``."""
    run = onednn_linear(weight, bias, relu)
    if run is not None:
        return run
    if relu:
        return lambda x: F.relu(F.linear(x, weight, bias))
    return lambda x: F.linear(x, weight, bias)


def _packed_image(image: torch.Tensor) -> Optional[Tuple[Any, Any]]:
    """One frame's i* (h*w, C), low precision, on a CPU: ``(scores, values)``
    with ``scores(a)`` = a i*^T (a (N, C) -> (N, h*w)) and ``values(w)`` = w i*
    ((N, h*w) -> (N, C)), oneDNN linears on i* and i*^T packed once
    (:func:`onednn_linear`); None where that is not available."""
    scores = onednn_linear(image, None, False, rows=8)
    values = onednn_linear(image.t().contiguous(), None, False, rows=8) if scores is not None else None
    return (scores, values) if values is not None else None


def _packed_layers(block: "ShiftBlock", dtype: torch.dtype, device: torch.device,
                   state: Optional[tuple] = None) -> List[Dict[str, Any]]:
    """Per layer: float32 click-side weights (the key / value projections
    laid out per head, the softmax scale folded into W_k) and the MLP in
    ``dtype``; kept while the block's parameters are unchanged
    (``device.derived_from_weights``: an optimizer step or
    ``load_state_dict`` packs them again)."""
    return derived_from_weights(block, "rpsam2_packed_layers", (dtype, device),
                                lambda: _pack_layers(block, dtype), state)


def _pack_layers(block: "ShiftBlock", dtype: torch.dtype) -> List[Dict[str, Any]]:
    layers = []
    with torch.no_grad():
        for layer in block.layers:
            att = layer.attn
            n, c = att.num_heads, block.dim
            d = c // n
            w1, w2 = layer.mlp[0], layer.mlp[2]
            layers.append({
                "q": (att.q_proj.weight.detach().float(), att.q_proj.bias.detach().float()),
                "k": (att.k_proj.weight.detach().float().view(n, d, c) * d ** -0.5).contiguous(),
                "v": (att.v_proj.weight.detach().float().view(n, d, c).transpose(1, 2).contiguous(),
                      att.v_proj.bias.detach().float().view(n, 1, d)),
                "out": (att.out_proj.weight.detach().float(), att.out_proj.bias.detach().float()),
                "norm1": (layer.norm1.weight.detach().float(), layer.norm1.bias.detach().float(), layer.norm1.eps),
                "norm2": (layer.norm2.weight.detach().float(), layer.norm2.bias.detach().float(), layer.norm2.eps),
                "mlp1": _mlp_linear(w1.weight.detach().to(dtype).contiguous(), w1.bias.detach().to(dtype), True),
                "mlp2": _mlp_linear(w2.weight.detach().to(dtype).contiguous(), w2.bias.detach().to(dtype), False),
                "heads": n,
            })
    return layers


def folded_low_precision(block: "ShiftBlock", point_embed: torch.Tensor, image: torch.Tensor,
                         state: Optional[tuple] = None, packed: Optional[Tuple[Any, Any]] = None) -> torch.Tensor:
    """The block at inference on i* stored in bf16 / fp16 (``image`` (B, hw,
    C)): eq. 1's layers with the key / value projections folded onto the
    click (as ``few_query_attention``), i* and the MLP in ``image``'s dtype,
    everything else float32; returns eq. 2's offsets in float32. ``packed``
    (one frame): i*'s two products through :func:`_packed_image`."""
    layers = _packed_layers(block, image.dtype, image.device, state)
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        b, t, c = point_embed.shape
        x = point_embed.float() + block.point_pos.float()
        for p in layers:
            n = p["heads"]
            q = F.linear(x, *p["q"]).view(b, t, n, c // n).transpose(1, 2)  # (B, n, T, d)
            a = torch.matmul(q, p["k"]).reshape(b, n * t, c).to(image.dtype)  # (B, nT, C): q_h W_k,h / sqrt(d)
            if packed is not None and b == 1:
                pk = packed[1](torch.softmax(packed[0](a[0]), dim=-1)).float().view(b, n, t, c)
            else:
                attn = torch.softmax(torch.matmul(image, a.transpose(1, 2)).transpose(1, 2), dim=-1)
                pk = torch.matmul(attn, image).float().view(b, n, t, c)
            o = (torch.matmul(pk, p["v"][0]) + p["v"][1]).transpose(1, 2).reshape(b, t, c)
            x = F.layer_norm(x + F.linear(o, *p["out"]), (c,), *p["norm1"])
            h = p["mlp2"](p["mlp1"](x.to(image.dtype)))
            x = F.layer_norm(x + h.float(), (c,), *p["norm2"])
        return torch.sigmoid(block.scale.float()) * torch.tanh(F.linear(x, block.delta.weight.float(),
                                                                          block.delta.bias.float()))


def apply_offset(coords: torch.Tensor, offset: torch.Tensor, image_size: int) -> torch.Tensor:
    """P' = P + offset * S in model pixels, kept inside the image (a point
    already outside stays where it was). With offset 0 the result is P
    exactly (no normalise/denormalise round trip)."""
    moved = coords + offset * float(image_size)
    lo = torch.clamp(coords, max=0.0)
    hi = torch.clamp(coords, min=float(image_size - 1))
    return torch.maximum(torch.minimum(moved, hi), lo)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def max_shift_px(scale: torch.Tensor, image_size: int) -> list:
    """Largest possible shift (x, y) in model pixels for the current scales."""
    return [float(v) * image_size for v in torch.sigmoid(scale.detach().float())]


def scale_for_fraction(fraction: float) -> float:
    """The token value s whose sigmoid is ``fraction`` of the image side."""
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    return math.log(fraction / (1 - fraction))
