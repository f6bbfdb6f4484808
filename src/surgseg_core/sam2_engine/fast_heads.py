"""A faster inference path for SAM2's prompt encoder + mask decoder on a
frame already encoded (the "second click"), with the same masks.

Why hand-written: SAM2 has no cached or fused decoder. ``_forward_sam_heads``
recomputes, on every click, work that depends on the image alone, and
upsamples every low-resolution mask to image_size x image_size although
clicks only need the low-resolution logits. This module computes, once per
frame (no mask prompt), ``src = image_embed + no_mask_embed`` and the three
projections of the first ``TwoWayAttentionBlock`` that read only ``src`` (the
token-to-image keys / values and the image-to-token queries: the image side
does not change before that step), and the upscaling's high-resolution
features in channels-last with the transposed convolutions' biases folded
in. Per click the rest is SAM2's arithmetic regrouped: the image-side
projections of the later attentions are folded onto the ~10 prompt tokens
(``few_query_attention`` / ``_i2t``: fewer multiply-adds, same softmax), attention is
written out (CPU's fused SDPA kernel is slow for these shapes), the final
attention runs only for the tokens the heads read, and the upscaling's
``ConvTranspose2d(k=2, s=2)`` are matmuls in channels-last "blocked" pixel
order with ``LayerNorm2d`` as ``F.layer_norm`` (``_upscale``). Float32
logits equal ``_forward_sam_heads``'s to ~1e-6
(tests/test_sam2_fast_heads.py: atol 1e-4, several models and prompts).

Under a bf16 (or fp16) autocast, e.g. the engine's "bf16" precision, the
decoder computes in that dtype from a cast copy of its weights
(``device.cast_copy``) and a frame cache in that dtype, with autocast off:
autocast would re-cast every weight and the cached 12 MB of image-side
tensors on every click. The prompt encoder (a few points) stays float32 so
the click's position is not rounded, and the outputs are float32.

Used only for inference (no gradients) without mask inputs; everything
else (tracking, training, mask prompts) goes through SAM2's own path.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections import OrderedDict
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..device import cast_copy, low_precision_dtype, parameter_state

NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE


class _FrameCache(NamedTuple):
    src: torch.Tensor  # (1, HW, C) image_embed + no-mask dense embedding, tokens-last
    k0: torch.Tensor  # (1, heads, HW, d) first block token->image keys
    v0: torch.Tensor  # (1, heads, HW, d) first block token->image values
    q0: torch.Tensor  # (1, heads, HW, d) first block image->token queries
    pe: torch.Tensor  # (1, HW, C) dense positional encoding
    s1: Optional[torch.Tensor]  # (1, h*w*4, C/4) feat_s1 + dc1 bias, blocked channels-last
    s0: Optional[torch.Tensor]  # (1, h*w*16, C/8) feat_s0 + dc2 bias, blocked channels-last


_lock = threading.Lock()
_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> OrderedDict
MAX_FRAMES = 2  # frames kept per model (~10 MB each at 1024 px)


@functools.lru_cache(maxsize=None)
def _sam2s_own_decoder(cls: type) -> bool:
    """``cls`` computes what SAM2's ``MaskDecoder`` does: a variant that
    overrides its ``predict_masks`` or ``forward`` (F2PASeg's fusion) computes
    something this module does not, so it takes SAM2's path. Per class,
    once: ``supported`` runs on every click."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder

    return cls.predict_masks is MaskDecoder.predict_masks and cls.forward is MaskDecoder.forward


def supported(model) -> bool:
    dec = model.sam_mask_decoder
    return (
        _sam2s_own_decoder(type(dec))
        and len(dec.transformer.layers) >= 1
        and dec.transformer.layers[0].skip_first_layer_pe
        and (not dec.use_high_res_features or len(dec.output_upscaling) == 5)
    )


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _unheads(x: torch.Tensor) -> torch.Tensor:
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, as ``F.scaled_dot_product_attention``
    without dropout or mask: on CPU its fused kernel is slow for SAM2's
    shapes (4096 image tokens against ~10 prompt tokens or back); batch 1
    operands broadcast."""
    scale = q.shape[-1] ** -0.5
    if q.shape[-2] > k.shape[-2]:  # many queries, few keys: softmax over a strided dim vectorises better
        scores = torch.matmul(k, q.transpose(-1, -2)).mul_(scale)
        return torch.matmul(torch.softmax(scores, dim=-2).transpose(-1, -2), v)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _attend(att, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM2's ``Attention.forward`` with ``_sdpa``."""
    n = att.num_heads
    out = _sdpa(_heads(att.q_proj(q), n), _heads(att.k_proj(k), n), _heads(att.v_proj(v), n))
    return att.out_proj(_unheads(out))


def few_query_attention(att, q_in, kp, keys):
    """Token-to-image ``Attention`` (few queries, N image keys/values) with
    the key and value projections folded onto the token side: per head,
    q_h (kp W_k,h^T + b_k,h)^T = (q_h W_k,h) kp^T + const (softmax drops
    it), and P (keys W_v,h^T + b_v,h) = (P keys) W_v,h^T + b_v,h (rows of P
    sum to 1): N x C x heads*T multiply-adds instead of N x C x C/2 when
    heads * T is below the attention width (SAM2's clicks: 8 * ~9 < 128)."""
    n = att.num_heads
    b, t, _ = q_in.shape
    width = att.q_proj.out_features
    if n * t >= width:
        return _attend(att, q_in, kp, keys)
    d = width // n
    q = att.q_proj(q_in).view(b, t, n, d).transpose(1, 2)
    a = torch.matmul(q, att.k_proj.weight.view(n, d, -1)).mul_(d ** -0.5).reshape(b, n * t, -1)
    # image tokens as the left operand: a transposed (N, C) operand is copied in bf16
    p = torch.softmax(torch.matmul(kp, a.transpose(1, 2)).transpose(1, 2), dim=-1)  # (B, n T, N)
    pk = torch.matmul(p, keys).view(b, n, t, -1)
    o = torch.matmul(pk, att.v_proj.weight.view(n, d, -1).transpose(1, 2)) + att.v_proj.bias.view(n, 1, d)
    return att.out_proj(o.transpose(1, 2).reshape(b, t, width))


def _i2t(att, kp, tok_k, tok_v, q_heads=None, residual=None):
    """Image-to-token ``Attention`` (N image queries, few token keys) with
    the query and output projections folded onto the token side:
    (kp W_q,h^T + b_q,h) k_h^T = kp (W_q,h^T k_h^T) + b_q,h k_h^T and
    sum_h P_h v_h W_o,h^T = P (v W_o^T per head); ``q_heads``: the image
    queries already projected (the first block's cache)."""
    n = att.num_heads
    b, t, _ = tok_k.shape
    width = att.q_proj.out_features
    if n * t >= width:
        if q_heads is None:
            out = _attend(att, kp, tok_k, tok_v)
        else:
            out = att.out_proj(_unheads(_sdpa(q_heads, _heads(att.k_proj(tok_k), n), _heads(att.v_proj(tok_v), n))))
        return out if residual is None else residual + out
    d = width // n
    k = att.k_proj(tok_k).view(b, t, n, d).transpose(1, 2)  # (B, n, T, d)
    v = att.v_proj(tok_v).view(b, t, n, d).transpose(1, 2)
    if q_heads is not None:
        s = torch.matmul(k, q_heads.transpose(-1, -2)).mul_(d ** -0.5)  # (B, n, T, N)
    else:
        g = torch.matmul(k, att.q_proj.weight.view(n, d, -1)).mul_(d ** -0.5)  # (B, n, T, C)
        s = torch.matmul(g.reshape(b, n * t, -1), kp.transpose(1, 2)).view(b, n, t, -1)
        s = s + torch.matmul(k, att.q_proj.bias.view(n, d, 1)).mul_(d ** -0.5)
    p = torch.softmax(s, dim=-2)  # over the tokens of each head (a softmax over a contiguous dim of ~8 is slower)
    # each head's P rows sum to 1: the output bias / heads rides on every head's values
    m = torch.matmul(v, att.out_proj.weight.view(-1, n, d).permute(1, 2, 0)) + att.out_proj.bias / n
    p = p.reshape(b, n * t, -1).transpose(1, 2)  # (B, N, n T)
    m = m.reshape(b, n * t, -1)
    if residual is None:
        return torch.matmul(p, m)
    return torch.baddbmm(residual.expand(b, -1, -1), p, m)  # residual + attention in one pass


def _block(layer, queries, keys, query_pe, key_pe):
    """SAM2's ``TwoWayAttentionBlock.forward`` (not the first block) with
    ``_sdpa``; ``keys + key_pe`` computed once (the image side does not
    change between the two cross attentions)."""
    q = queries + query_pe
    queries = layer.norm1(queries + _attend(layer.self_attn, q, q, queries))
    kp = keys + key_pe
    queries = layer.norm2(queries + few_query_attention(layer.cross_attn_token_to_image, queries + query_pe, kp, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(_i2t(layer.cross_attn_image_to_token, kp, queries + query_pe, queries, residual=keys))
    return queries, keys


def _deconv_weight(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    # (Cin, Cout, 2, 2) -> (Cin, 2 * 2 * Cout): output pixel (i, j) channel o
    w = conv.weight
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _upscale(dec, keys: torch.Tensor, c: "_FrameCache", h: int, w: int, hyper_in: torch.Tensor) -> torch.Tensor:
    """SAM2's high-res upscaling (dc1 + feat_s1, LayerNorm2d, GELU, dc2 +
    feat_s0, GELU) and the hypernetwork product, masks (B, M, 4h, 4w).
    Each ConvTranspose2d(k=2, s=2) is one matmul, channels-last; its output
    stays in "blocked" pixel order (every input pixel's 2x2 block
    contiguous: h, w, i1, j1[, i2, j2]), which the per-pixel LayerNorm,
    GELU and the second transposed convolution do not mind; the skip
    features are cached in that order and only the M masks are reordered."""
    dc1, ln1, act1, dc2, act2 = dec.output_upscaling
    b = keys.shape[0]
    y = torch.matmul(keys, _deconv_weight(dc1)).view(b, h * w * 4, -1)  # (B, h w i1 j1, C1)
    y = act1(F.layer_norm(y.add_(c.s1), (y.shape[-1],), ln1.weight, ln1.bias, ln1.eps))
    y = torch.matmul(y, _deconv_weight(dc2)).view(b, h * w * 16, -1)  # (B, h w i1 j1 i2 j2, C2)
    y = act2(y.add_(c.s0))
    if y.dtype != torch.float32:  # bf16 matmul copies a transposed right operand: 5x slower this way round
        return torch.matmul(y, hyper_in.transpose(1, 2)).transpose(1, 2)
    return torch.matmul(hyper_in, y.transpose(1, 2))  # (B, M, h w i1 j1 i2 j2)


def _unblock(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, M, h w i1 j1 i2 j2) blocked masks -> (B, M, 4h, 4w)."""
    b, m = masks.shape[:2]
    return masks.reshape(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, m, 4 * h, 4 * w)


def _frame_cache(model, dec, image_embed: torch.Tensor, high_res: Optional[List[torch.Tensor]],
                 dtype: torch.dtype) -> _FrameCache:
    pe_mod = model.sam_prompt_encoder
    block = dec.transformer.layers[0]
    src = image_embed[:1].float() + pe_mod.no_mask_embed.weight.reshape(1, -1, 1, 1)
    src = src.flatten(2).transpose(1, 2).to(dtype).contiguous()
    pe = pe_mod.get_dense_pe().flatten(2).transpose(1, 2).to(dtype).contiguous()
    kpe = src + pe
    t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    k0 = _heads(t2i.k_proj(kpe), t2i.num_heads)
    v0 = _heads(t2i.v_proj(src), t2i.num_heads)
    q0 = _heads(i2t.q_proj(kpe), i2t.num_heads)
    s1 = s0 = None
    if dec.use_high_res_features:
        dc1, _, _, dc2, _ = dec.output_upscaling
        feat_s0, feat_s1 = (f.to(dtype) for f in high_res)
        h, w = image_embed.shape[-2:]
        # blocked pixel order (see _upscale): (h, w, i1, j1, C) and (h, w, i1, j1, i2, j2, C)
        s1 = (feat_s1[:1] + dc1.bias.reshape(1, -1, 1, 1)).view(1, -1, h, 2, w, 2)
        s1 = s1.permute(0, 2, 4, 3, 5, 1).reshape(1, h * w * 4, -1).contiguous()
        s0 = (feat_s0[:1] + dc2.bias.reshape(1, -1, 1, 1)).view(1, -1, h, 2, 2, w, 2, 2)
        s0 = s0.permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(1, h * w * 16, -1).contiguous()
    return _FrameCache(src, k0, v0, q0, pe, s1, s0)


def _cached(model, dec, key_tensors, make_embed, high_res, dtype: torch.dtype) -> _FrameCache:
    key = (tuple(id(t) for t in key_tensors), parameter_state(model.sam_prompt_encoder),
           parameter_state(model.sam_mask_decoder), dtype)
    with _lock:
        per_model = _caches.get(model)
        if per_model is None:
            per_model = _caches[model] = OrderedDict()
        hit = per_model.get(key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], key_tensors)):
            per_model.move_to_end(key)
            return hit[1]
    entry = _frame_cache(model, dec, make_embed(), high_res, dtype)
    with _lock:
        per_model[key] = ([weakref.ref(t) for t in key_tensors], entry)
        while len(per_model) > MAX_FRAMES:
            per_model.popitem(last=False)
    return entry


def clear_cache(model=None) -> None:
    with _lock:
        if model is None:
            _caches.clear()
        else:
            _caches.pop(model, None)


def forward_sam_heads(model, key_tensors, make_embed, point_coords, point_labels, high_res, multimask_output: bool):
    """SAM2's ``_forward_sam_heads`` without mask inputs and without the
    image-size upsampling: (low_res_multimasks, ious, low_res_best,
    object_score_logits, obj_ptr), equal to SAM2's up to float rounding.
    One frame for all N prompts: ``make_embed()`` gives its (1, C, h, w)
    decoder input (called once per frame), ``high_res`` its (1, ...) finer
    levels; ``key_tensors`` identify the frame (the cache holds weak
    references and checks they are still the same tensors). Outputs are
    float32; under a bf16/fp16 autocast the decoder computes in that dtype
    (module docstring)."""
    dev = point_coords.device.type
    dtype = low_precision_dtype(dev)
    with torch.autocast(dev, enabled=False) if dtype is not None else contextlib.nullcontext():
        return _forward_sam_heads(model, cast_copy(model.sam_mask_decoder, dtype), dtype or torch.float32,
                                  key_tensors, make_embed, point_coords, point_labels, high_res, multimask_output)


def _forward_sam_heads(model, dec, dtype, key_tensors, make_embed, point_coords, point_labels, high_res,
                       multimask_output: bool):
    pe_mod = model.sam_prompt_encoder
    tr = dec.transformer
    c = _cached(model, dec, list(key_tensors), make_embed, high_res, dtype)
    n = point_coords.shape[0]
    # SAM2's prompt encoder module, float32 (its dense output is a broadcast view, unused here)
    sparse, _ = pe_mod(points=(point_coords.float(), point_labels), boxes=None, masks=None)
    sparse = sparse.to(dtype)
    if dec.pred_obj_scores:
        out_tok = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], 0)
        s = 1
    else:
        out_tok = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0)
        s = 0
    tokens = torch.cat([out_tok.unsqueeze(0).expand(n, -1, -1), sparse], 1)

    # first block, image side from the cache
    b0 = tr.layers[0]
    queries = b0.norm1(_attend(b0.self_attn, tokens, tokens, tokens))
    t2i = b0.cross_attn_token_to_image
    q = _heads(t2i.q_proj(queries + tokens), t2i.num_heads)
    queries = b0.norm2(queries + t2i.out_proj(_unheads(_sdpa(q, c.k0, c.v0))))
    queries = b0.norm3(queries + b0.mlp(queries))
    keys = b0.norm4(_i2t(b0.cross_attn_image_to_token, None, queries + tokens, queries, q_heads=c.q0, residual=c.src))
    key_pe = c.pe
    for layer in tr.layers[1:]:
        queries, keys = _block(layer, queries, keys, tokens, key_pe)
    # the final attention only for the output tokens the heads read (the
    # prompt tokens' outputs are unused; attention rows are independent)
    used = s + 1 + dec.num_mask_tokens
    attn_out = few_query_attention(tr.final_attn_token_to_image, (queries + tokens)[:, :used], keys + key_pe, keys)
    hs = tr.norm_final_attn(queries[:, :used] + attn_out)

    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1 : s + 1 + dec.num_mask_tokens, :]
    h, w = model.sam_prompt_encoder.image_embedding_size
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
    if dec.use_high_res_features:
        # blocked pixel order until the masks are selected (SAM2's selection
        # reads mask sums and whole masks only): fewer masks to reorder
        masks = _upscale(dec, keys, c, h, w, hyper_in)
        unblock = lambda x: _unblock(x, h, w)  # noqa: E731
    else:  # SAM2's own modules (channels-first)
        up = dec.output_upscaling(keys.transpose(1, 2).reshape(n, -1, h, w))
        masks = torch.matmul(hyper_in, up.flatten(2))
        unblock = lambda x: x.reshape(*x.shape[:2], *up.shape[-2:])  # noqa: E731
    masks = masks.float()
    iou_pred = dec.iou_prediction_head(iou_token_out).float()
    if dec.pred_obj_scores:
        obj_scores = dec.pred_obj_score_head(hs[:, 0, :]).float()
    else:
        obj_scores = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)

    # SAM2's MaskDecoder.forward selection
    if multimask_output:
        masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
    elif dec.dynamic_multimask_via_stability and not dec.training:
        masks, iou_pred = dec._dynamic_multimask_via_stability(masks[..., None], iou_pred)
        masks = masks[..., 0]
    else:
        masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
    if multimask_output and dec.use_multimask_token_for_obj_ptr:
        sam_tokens = mask_tokens_out[:, 1:]
    else:
        sam_tokens = mask_tokens_out[:, 0:1]
    sam_tokens = sam_tokens.float()

    # SAM2Base._forward_sam_heads after the decoder (no high-res masks)
    if model.pred_obj_scores:
        is_obj = obj_scores > 0
        masks = torch.where(is_obj.view(n, 1, 1), masks, NO_OBJ_SCORE)
    masks = unblock(masks)
    token = sam_tokens[:, 0]
    if multimask_output:
        best = torch.argmax(iou_pred, dim=-1)
        rows = torch.arange(n, device=masks.device)
        best_masks = masks[rows, best].unsqueeze(1)
        if sam_tokens.size(1) > 1:
            token = sam_tokens[rows, best]
    else:
        best_masks = masks
    obj_ptr = model.obj_ptr_proj(token)
    if model.pred_obj_scores:
        lam = obj_scores.sigmoid() if model.soft_no_obj_ptr else is_obj.float()
        if model.fixed_no_obj_ptr:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * model.no_obj_ptr
    return masks, iou_pred, best_masks, obj_scores, obj_ptr
