"""SAM2's image path as two functions, with or without gradients: encode
images into frame features, and run the prompt encoder + mask decoder on
given features with points / boxes / masks. Both call SAM2's own modules
(``forward_image``, ``_prepare_memory_conditioned_features``,
``_forward_sam_heads``), so masks equal what SAM2 computes on a frame
without memory; the streaming engine, the click session and training code
(RP-SAM2's shift block, F2PASeg's decoder) share them. Without gradients
and mask inputs ``decode_masks`` takes ``fast_heads`` (the same modules'
weights with per-frame cached image work; logits equal up to float
rounding, ``fast=False`` for SAM2's call itself).

    feats = encode_frames(model, images)                  # (B, 3, S, S) preprocessed
    out = decode_masks(model, feats, point_coords=pts, point_labels=lbl, multimask_output=True)
    out.masks                                             # (N, 3, S/4, S/4) logits

Gradients flow when the caller has them enabled (no ``no_grad`` inside);
inference callers wrap the calls in ``torch.inference_mode()``.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import fast_heads


class FrameFeatures(NamedTuple):
    """A batch of encoded frames: SAM2's ``forward_image`` output.

    ``backbone_fpn``: FPN levels, finest first, each (B, C_l, H_l, W_l); the
    finest two already projected by the mask decoder's ``conv_s0``/``conv_s1``
    (when the model uses high-resolution features), as SAM2 caches them.
    ``vision_pos_enc``: their positional encodings (the same for every frame).
    """

    backbone_fpn: List[torch.Tensor]
    vision_pos_enc: List[torch.Tensor]

    @property
    def batch(self) -> int:
        return int(self.backbone_fpn[-1].shape[0])

    @property
    def image_embed(self) -> torch.Tensor:
        """The coarsest level (B, C, S/16, S/16): what the decoder attends to."""
        return self.backbone_fpn[-1]

    def expand(self, n: int) -> "FrameFeatures":
        """The same features for ``n`` prompts (a view when the batch is 1)."""
        if self.batch == n:
            return self
        if self.batch != 1:
            raise ConfigError(f"features of {self.batch} frames cannot serve {n} prompts (give 1 frame or {n})")
        return FrameFeatures(
            [f.expand(n, -1, -1, -1) for f in self.backbone_fpn],
            [p.expand(n, -1, -1, -1) for p in self.vision_pos_enc],
        )


class HeadOutput(NamedTuple):
    """Prompt encoder + mask decoder outputs for N prompts.

    ``masks``: (N, M, S/4, S/4) low-resolution mask logits (M = 3 with
    multimask output, else 1), SAM2's NO_OBJ_SCORE where the object score
    says absent; ``ious``: (N, M) predicted IoUs; ``best_masks``: (N, 1, ...)
    the mask with the highest predicted IoU; ``object_score_logits``: (N, 1);
    ``obj_ptr``: (N, C) the object pointer SAM2's memory uses."""

    masks: torch.Tensor
    ious: torch.Tensor
    best_masks: torch.Tensor
    object_score_logits: torch.Tensor
    obj_ptr: torch.Tensor


def encode_frames(model, images: torch.Tensor, *, image_encoder_forward=None) -> FrameFeatures:
    """(B, 3, S, S) preprocessed images (``preprocess_frame``) -> features.
    ``image_encoder_forward``: a replacement for the image encoder's forward
    in this call (the engine's ``torch.compile``-d one); it runs without the
    per-call shortcuts below, whose per-call functions would fail its guards."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must be (B, 3, S, S), got {tuple(images.shape)}")
    if image_encoder_forward is not None:
        # a copy made here, in the caller's grad mode: frames read ahead on another thread arrive as normal
        # tensors, others as inference tensors, and the compiled graph's guards tell the two apart (a recompile)
        with _shadowed(model.image_encoder, "forward", image_encoder_forward):
            out = model.forward_image(images.clone())
        return FrameFeatures(list(out["backbone_fpn"]), list(out["vision_pos_enc"]))
    if _channels_last(images):
        images = images.contiguous(memory_format=torch.channels_last)
    trunk = getattr(model.image_encoder, "trunk", None)
    with _reused_pos_embed(trunk), _reused_neck_pos(getattr(model.image_encoder, "neck", None)), \
            _unpadded_windows(trunk, images.device), _folded_high_res_projections(model, images.device):
        out = model.forward_image(images)
    return FrameFeatures(list(out["backbone_fpn"]), list(out["vision_pos_enc"]))


def _channels_last(images: torch.Tensor) -> bool:
    """The fast CPU path's layout (bf16 autocast, no gradients): Hiera's patch
    embedding permutes its convolution's (B, C, H, W) output to (B, H, W, C)
    and adds a positional embedding permuted the same way, so its first
    stage's layer norms, residual adds and window copies all run on a
    channel-strided view (a layer norm over the 128 x 128 x 96 map at 512 px:
    4.3 ms, 0.7 ms contiguous). A channels-last image makes the convolution's
    output, and with a contiguous positional embedding the whole stream,
    contiguous (SAM2.1-tiny's encoder at 512 px in bf16: 0.91-0.97x the time
    in interleaved runs; the embedding in bf16 too, see _reused_pos_embed,
    0.87-1.0x more).
    Float32 keeps SAM2's layout (also with ``reordered_float32``: no gain
    measured there, 22.4 vs 22.8 ms a frame for the demo-size model)."""
    return _fast_cpu_dtype(images.device) not in (None, torch.float32)


_reordering = threading.local()


@contextlib.contextmanager
def reordered_float32(enabled: bool = True) -> Iterator[None]:
    """Inside the block (this thread), float32 CPU inference without
    gradients takes the fast path's exact reorderings too (the engine's
    "fp32-fast" precision): Hiera's unpadded windows and the folded
    high-resolution projections (see _unpadded_windows,
    _folded_high_res_projections), each the same map in real arithmetic, so
    results equal SAM2's up to float rounding but are not bit-equal. Outside
    it float32 runs SAM2's arithmetic unchanged."""
    previous = getattr(_reordering, "on", False)
    _reordering.on = bool(enabled)
    try:
        yield
    finally:
        _reordering.on = previous


def _fast_cpu_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The fast CPU path's dtype (a CPU tensor, no gradients): autocast's
    dtype with CPU autocast on, float32 inside ``reordered_float32``, else
    None (SAM2's own arithmetic)."""
    if device.type != "cpu" or torch.is_grad_enabled():
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return torch.float32 if getattr(_reordering, "on", False) else None


@contextlib.contextmanager
def _shadowed(module, name: str, function) -> Iterator[None]:
    """``module.<name>`` is ``function`` inside the block: an instance
    attribute shadowing the class's method, removed on exit."""
    setattr(module, name, function)
    try:
        yield
    finally:
        module.__dict__.pop(name, None)


# trunk -> (key, tensor): Hiera's positional embedding per input size, see _reused_pos_embed
_pos_embeds: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_pos_embed_lock = threading.Lock()


@contextlib.contextmanager
def _reused_pos_embed(trunk) -> Iterator[None]:
    """Hiera (``sam2.modeling.backbones.hieradet``) interpolates its
    positional embedding (bicubic) and tiles its window embedding on every
    forward: the same tensor for every frame of a video (~25 ms a frame at
    512 px on 2 CPU cores). Without gradients it is computed once per input
    size and parameter version, by Hiera's own ``_get_pos_embed`` (so the
    features stay bit-equal); with gradients Hiera's path runs unchanged."""
    original = getattr(type(trunk), "_get_pos_embed", None) if trunk is not None else None
    if original is None or torch.is_grad_enabled():
        yield
        return

    def cached(hw):
        if torch.is_grad_enabled():  # another thread training the same model meanwhile
            return original(trunk, hw)
        params = (trunk.pos_embed, trunk.pos_embed_window)
        # dtype and device too: Module.to() swaps a parameter's data without a new version
        # the fast CPU path (see _channels_last): contiguous, and in autocast's dtype, so that Hiera's first
        # stage adds, normalises and copies a bf16 stream like its later stages (it was float32 there only
        # because this float32 embedding is added to the patch embedding's bf16 output)
        fast = _fast_cpu_dtype(trunk.pos_embed.device)
        fast = None if fast == torch.float32 else fast  # float32 keeps SAM2's layout (see _channels_last)
        key = (tuple(hw), fast) + tuple((id(p), p._version, p.dtype, p.device) for p in params)
        with _pos_embed_lock:
            hit = _pos_embeds.get(trunk)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = original(trunk, hw)
        if fast is not None:
            value = value.to(fast).contiguous()
        with _pos_embed_lock:
            _pos_embeds[trunk] = (key, value)
        return value

    with _shadowed(trunk, "_get_pos_embed", cached):  # for this forward only
        yield


@contextlib.contextmanager
def _unpadded_windows(trunk, device: torch.device) -> Iterator[None]:
    """On the fast CPU path (see _fast_cpu_dtype), Hiera's windowed blocks
    whose map does not divide into windows (SAM2.1-tiny at 512 px: stage 3's
    32 x 32 map in 14 x 14 windows, padded to 42 x 42; stage 4's 16 x 16 in
    7 x 7, padded to 21 x 21) run their qkv and output projections on the
    real tokens only: SAM2 pads the normalised map with zeros and projects
    every padded token, whose qkv is just the bias (~70 % more rows there);
    the padded tokens still take part in the attention as SAM2 has them.
    Elsewhere (plain float32, gradients) Hiera's own forward runs."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    # the fast-path check first: SAM2's own path (float32, gradients) need not walk the trunk every frame
    blocks = [] if trunk is None or _fast_cpu_dtype(device) is None else \
        [b for b in trunk.modules() if type(b) is MultiScaleBlock and b.window_size > 0]
    if not blocks:
        yield
        return
    with contextlib.ExitStack() as stack:
        for block in blocks:
            stack.enter_context(_shadowed(block, "forward", functools.partial(_window_block_forward, block)))
        yield


def _window_block_forward(block, x: torch.Tensor) -> torch.Tensor:
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    size = block.window_size
    padded = (x.shape[1] % size) or (x.shape[2] % size)
    if not padded or block.training or torch.is_grad_enabled() or _fast_cpu_dtype(x.device) is None:
        return MultiScaleBlock.forward(block, x)
    return window_block_without_padding(block, x)


def window_block_without_padding(block, x: torch.Tensor) -> torch.Tensor:
    """SAM2's ``MultiScaleBlock.forward`` (sam2/modeling/backbones/hieradet.py)
    for a windowed block, with the padded tokens' qkv filled in as the bias
    instead of projected, and the output projection (per token) applied
    after the padding is dropped; in any dtype (see _unpadded_windows)."""
    from sam2.modeling.backbones.hieradet import do_pool
    from sam2.modeling.backbones.utils import window_partition, window_unpartition

    attn = block.attn
    shortcut = x
    x = block.norm1(x)
    if block.dim != block.dim_out:
        shortcut = do_pool(block.proj(x), block.pool)
    size = block.window_size
    B, H, W, _ = x.shape
    Hp, Wp = H + (size - H % size) % size, W + (size - W % size) % size
    qkv = attn.qkv(x)  # (B, H, W, 3 C) of the real tokens
    full = qkv.new_empty(B, Hp, Wp, qkv.shape[-1])
    # a zero-padded token's projection: the bias (autocast's linear rounds it to its dtype the same way)
    bias = attn.qkv.bias.to(qkv.dtype) if attn.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
    full[:, H:] = bias
    full[:, :H, W:] = bias
    full[:, :H, :W] = qkv
    windows, pad_hw = window_partition(full, size)
    n = windows.shape[0]
    # MultiScaleAttention.forward from here, without its projection
    qkv = windows.reshape(n, size * size, 3, attn.num_heads, -1)
    q, k, v = torch.unbind(qkv, 2)
    h = w = size
    if attn.q_pool:
        q = do_pool(q.reshape(n, size, size, -1), attn.q_pool)
        h, w = q.shape[1:3]
        q = q.reshape(n, h * w, attn.num_heads, -1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).reshape(n, h, w, -1)
    if block.q_stride:  # shapes changed by the query pooling, as in SAM2
        size = block.window_size // block.q_stride[0]
        H, W = shortcut.shape[1:3]
        pad_hw = (H + (size - H % size) % size, W + (size - W % size) % size)
    out = window_unpartition(out, size, pad_hw, (H, W))
    x = shortcut + block.drop_path(attn.proj(out))
    return x + block.drop_path(block.mlp(block.norm2(x)))


@contextlib.contextmanager
def _folded_high_res_projections(model, device: torch.device) -> Iterator[None]:
    """On the fast CPU path (see _fast_cpu_dtype): SAM2's FPN neck projects
    Hiera's two high-resolution levels to 256 channels (1 x 1 convolutions)
    only for ``forward_image`` to project them straight down to 32 and 64
    channels for the mask decoder (``conv_s0`` / ``conv_s1``, 1 x 1): one
    1 x 1 convolution each instead, weights W_s W_n and bias W_s b_n + b_s
    (the same map; at 512 px ~0.7 GMAC a frame less, mostly at 128 x 128).
    Only where those levels get no top-down features (SAM2.1: top-down on
    levels 2 and 3); elsewhere SAM2's path runs."""
    neck = getattr(model.image_encoder, "neck", None)
    decoder = getattr(model, "sam_mask_decoder", None)
    pairs = []
    if _fast_cpu_dtype(device) is not None and getattr(model, "use_high_res_features_in_sam", False) \
            and type(neck).__name__ == "FpnNeck" and not {0, 1} & set(neck.fpn_top_down_levels):
        last = len(neck.convs) - 1
        pairs = [(getattr(neck.convs[last - level], "conv", None), getattr(decoder, name, None))
                 for level, name in ((0, "conv_s0"), (1, "conv_s1"))]
    if not pairs or not all(_is_pointwise(a) and _is_pointwise(b) for a, b in pairs):
        yield
        return
    with contextlib.ExitStack() as stack:
        for lateral, down in pairs:
            stack.enter_context(_shadowed(lateral, "forward", functools.partial(folded_pointwise, lateral, down)))
            stack.enter_context(_shadowed(down, "forward", _unchanged))
        yield


def _is_pointwise(conv) -> bool:
    return type(conv) is torch.nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) \
        and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def folded_pointwise(first, second, x: torch.Tensor) -> torch.Tensor:
    """``second(first(x))`` for two 1 x 1 convolutions as one convolution
    (the composed weights in float32, then the convolution under whatever
    autocast is on)."""
    with torch.autocast(x.device.type, enabled=False):
        w2 = second.weight[:, :, 0, 0].float()
        weight = (w2 @ first.weight[:, :, 0, 0].float())[:, :, None, None]
        bias = second.bias.float() if second.bias is not None else torch.zeros(w2.shape[0], device=x.device)
        if first.bias is not None:
            bias = bias + w2 @ first.bias.float()
    return F.conv2d(x, weight, bias)


# PositionEmbeddingSine module -> {(h, w, dtype, device): (1, C, h, w) tensor}, see _reused_neck_pos
_neck_pos: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_NECK_POS_SIZES = 8  # entries kept per module (feature sizes x dtypes): a few MB each


@contextlib.contextmanager
def _reused_neck_pos(neck) -> Iterator[None]:
    """SAM2's FPN neck asks its sine position encoding for every level on
    every frame; the encoding keeps a float32 table per size but hands out a
    fresh copy (``repeat``), which the neck then casts to the features' dtype:
    ~12 ms a frame at 512 px (the 128 x 128 level alone is 16 MB). Without
    gradients each (size, dtype) is made once, by the module itself, already
    in the features' dtype (the values the neck's cast gives), and shared:
    expanded views for batches, never written to (SAM2 and the engine only
    read them; an in-place write on an expanded view raises)."""
    pe = getattr(neck, "position_encoding", None)
    if pe is None or torch.is_grad_enabled() or type(pe).__name__ != "PositionEmbeddingSine":
        yield
        return
    original = type(pe).forward

    def cached(x):
        if torch.is_grad_enabled():
            return original(pe, x)
        key = (x.shape[-2], x.shape[-1], x.dtype, x.device)
        with _pos_embed_lock:
            table = _neck_pos.setdefault(pe, {})
            hit = table.get(key)
        if hit is None:
            hit = original(pe, x[:1]).to(x.dtype)
            with _pos_embed_lock:
                if len(table) >= _NECK_POS_SIZES:
                    table.clear()
                table[key] = hit
        return hit.expand(x.shape[0], -1, -1, -1)

    with _shadowed(pe, "forward", cached):  # for this forward only
        yield


def flat_features(model, feats: FrameFeatures, batch: Optional[int] = None):
    """(vision_feats, vision_pos, feat_sizes) as SAM2's ``track_step`` takes
    them (``_prepare_backbone_features``), for ``batch`` objects."""
    if batch is not None:
        feats = feats.expand(batch)
    backbone_out = {"backbone_fpn": list(feats.backbone_fpn), "vision_pos_enc": list(feats.vision_pos_enc)}
    _, vision_feats, vision_pos, feat_sizes = model._prepare_backbone_features(backbone_out)
    return vision_feats, vision_pos, feat_sizes


def _high_res(model, feats: FrameFeatures) -> Optional[List[torch.Tensor]]:
    # the levels below the coarsest that SAM2 feeds its decoder (as _track_step)
    levels = feats.backbone_fpn[-model.num_feature_levels:]
    return list(levels[:-1]) if len(levels) > 1 else None


def no_memory_embedding(model, feats: FrameFeatures) -> torch.Tensor:
    """(B, C, h, w) features of frames seen without memory, exactly as SAM2
    prepares an initial conditioning frame (adds ``no_mem_embed``)."""
    vision_feats, vision_pos, feat_sizes = flat_features(model, feats)
    return model._prepare_memory_conditioned_features(
        frame_idx=0,
        is_init_cond_frame=True,
        current_vision_feats=vision_feats[-1:],
        current_vision_pos_embeds=vision_pos[-1:],
        feat_sizes=feat_sizes[-1:],
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=1,
    )


def box_points(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) boxes x0, y0, x1, y1 -> SAM's two corner points (N, 2, 2) with labels 2, 3."""
    coords = boxes.reshape(-1, 2, 2)
    labels = torch.tensor([2, 3], dtype=torch.int32, device=boxes.device).expand(coords.shape[0], 2)
    return coords, labels


def decode_masks(
    model,
    feats: FrameFeatures,
    *,
    point_coords: Optional[torch.Tensor] = None,
    point_labels: Optional[torch.Tensor] = None,
    boxes: Optional[torch.Tensor] = None,
    mask_inputs: Optional[torch.Tensor] = None,
    multimask_output: bool = False,
    image_embed: Optional[torch.Tensor] = None,
    fast: bool = True,
) -> HeadOutput:
    """SAM2's prompt encoder + mask decoder on ``feats`` for N prompts.

    ``point_coords`` (N, P, 2) x, y in model pixels (0..image_size),
    ``point_labels`` (N, P): 1 object, 0 background, -1 padding (2 / 3 box
    corners); ``boxes`` (N, 4) in model pixels, placed before the points as
    SAM does; ``mask_inputs`` (N, 1, H, W) mask logits (e.g. a previous
    prediction; resized by SAM2). ``feats`` holds 1 frame (shared by all
    prompts) or N. ``image_embed``: the frame's no-memory embedding if the
    caller keeps it (else computed, see ``no_memory_embedding``).

    ``fast`` (default): without gradients, mask inputs or per-prompt frames,
    ``fast_heads.forward_sam_heads`` (per-frame cache of the image-only
    work, no image-size upsampling; logits equal SAM2's up to float
    rounding); False: always SAM2's ``_forward_sam_heads``.
    """
    coords, labels = point_coords, point_labels
    if (coords is None) != (labels is None):
        raise ConfigError("point_coords and point_labels go together")
    sizes = {t.shape[0] for t in (coords, boxes, mask_inputs) if t is not None}
    if not sizes:
        raise ConfigError("give points, boxes or mask inputs")
    if len(sizes) > 1:
        raise ConfigError(f"prompts of different batch sizes: {sorted(sizes)}")
    (n,) = sizes
    if boxes is not None:
        bc, bl = box_points(boxes)
        coords = bc if coords is None else torch.cat([bc, coords], 1)
        labels = bl if labels is None else torch.cat([bl, labels.to(torch.int32)], 1)
    if coords is not None and (coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]):
        raise ConfigError(f"points must be (N, P, 2) with labels (N, P), got {tuple(coords.shape)} / {tuple(labels.shape)}")
    if (fast and coords is not None and mask_inputs is None and not torch.is_grad_enabled() and feats.batch == 1
            and (image_embed is None or image_embed.shape[0] == 1) and fast_heads.supported(model)):
        high_res = _high_res(model, feats)
        if high_res is not None or not model.sam_mask_decoder.use_high_res_features:
            embed = feats.image_embed if image_embed is None else image_embed  # the cache's key
            make = (lambda: no_memory_embedding(model, feats)) if image_embed is None else (lambda: image_embed)
            masks, ious, best, scores, ptr = fast_heads.forward_sam_heads(
                model, [embed] + list(high_res or []), make, coords, labels.to(torch.int32), high_res, multimask_output)
            return HeadOutput(masks=masks, ious=ious, best_masks=best, object_score_logits=scores, obj_ptr=ptr)
    if image_embed is None:
        image_embed = no_memory_embedding(model, feats if feats.batch == n else feats.expand(1))
    if image_embed.shape[0] != n:
        image_embed = image_embed.expand(n, -1, -1, -1)
    high_res = _high_res(model, feats.expand(n))
    point_inputs = None if coords is None else {"point_coords": coords, "point_labels": labels.to(torch.int32)}
    low_multi, _, ious, low_best, _, obj_ptr, obj_scores = model._forward_sam_heads(
        backbone_features=image_embed,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        high_res_features=high_res,
        multimask_output=multimask_output,
    )
    return HeadOutput(masks=low_multi, ious=ious, best_masks=low_best, object_score_logits=obj_scores, obj_ptr=obj_ptr)


def parse_prompt(
    points: Optional[Sequence[Sequence[float]]] = None,
    labels: Optional[Sequence[int]] = None,
    box: Optional[Sequence[float]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Clicks and/or a box -> (P, 2) float32 points (box corners first, as
    SAM) and (P,) int32 labels (1 object, 0 background, 2 / 3 box corners);
    ConfigError on anything malformed. The one prompt parser of the engine."""
    pts = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    lbl = np.zeros((0,), np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
    if (points is None) != (labels is None) or len(pts) != len(lbl):
        raise ConfigError(f"points and labels must be given together, one label per point ({len(pts)} vs {len(lbl)})")
    if len(lbl) and not np.isin(lbl, (0, 1)).all():
        raise ConfigError(f"point labels must be 1 (object) or 0 (background), got {sorted(set(lbl.tolist()))}")
    if not np.all(np.isfinite(pts)):
        raise ConfigError("point coordinates contain NaN or infinity")
    if box is not None:
        b = np.asarray(box, np.float32).reshape(-1)
        # x1 == x0 is allowed: the tight box of a one-pixel-wide object in inclusive pixel coordinates
        # (``datasets.mask_box``, and SAM2's training boxes) is a line
        if b.size != 4 or not np.all(np.isfinite(b)) or not (b[2] >= b[0] and b[3] >= b[1]):
            raise ConfigError(f"box must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0, got {b.tolist()}")
        pts = np.concatenate([b.reshape(2, 2), pts], 0)
        lbl = np.concatenate([np.array([2, 3], np.int32), lbl], 0)
    return pts, lbl


def prompt_points(
    points: Optional[Sequence[Sequence[float]]] = None,
    labels: Optional[Sequence[int]] = None,
    box: Optional[Sequence[float]] = None,
    *,
    scale: Tuple[float, float] = (1.0, 1.0),
    device: Optional[torch.device] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``parse_prompt`` then (1, P, 2) model-pixel coordinates (``scale``:
    model pixels per input pixel in x, y) and (1, P) labels; None without
    points or box."""
    pts, lbl = parse_prompt(points, labels, box)
    if not len(pts):
        return None
    coords = torch.from_numpy(pts * np.asarray(scale, np.float32))[None].to(device)
    return coords, torch.from_numpy(lbl)[None].to(device)
