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
in. Per click it runs the rest of SAM2's modules (the second block and the
final attention are SAM2's own module calls) and the upscaling as two
matmuls + pixel rearrangement with ``F.layer_norm`` over channels
(``ConvTranspose2d(k=2, s=2)`` and ``LayerNorm2d`` of SAM2 in other
arithmetic order): float32 logits match ``_forward_sam_heads`` to ~1e-5
(tests/test_sam2_fast_heads.py).

Used only for inference (no gradients) without mask inputs; everything
else (tracking, training, mask prompts) goes through SAM2's own path.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE


class _FrameCache(NamedTuple):
    src: torch.Tensor  # (1, HW, C) image_embed + no-mask dense embedding, tokens-last
    k0: torch.Tensor  # (1, heads, HW, d) first block token->image keys
    v0: torch.Tensor  # (1, heads, HW, d) first block token->image values
    q0: torch.Tensor  # (1, heads, HW, d) first block image->token queries
    pe: torch.Tensor  # (1, HW, C) dense positional encoding
    s1: Optional[torch.Tensor]  # (1, h*2, w*2, C/4) feat_s1 + dc1 bias, channels-last
    s0: Optional[torch.Tensor]  # (1, h*4, w*4, C/8) feat_s0 + dc2 bias, channels-last


_lock = threading.Lock()
_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> OrderedDict
MAX_FRAMES = 2  # frames kept per model (~10 MB each at 1024 px)


def supported(model) -> bool:
    dec = model.sam_mask_decoder
    return (
        len(dec.transformer.layers) >= 1
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


def _block(layer, queries, keys, query_pe, key_pe):
    """SAM2's ``TwoWayAttentionBlock.forward`` (not the first block) with
    ``_sdpa``; ``keys + key_pe`` computed once (the image side does not
    change between the two cross attentions)."""
    q = queries + query_pe
    queries = layer.norm1(queries + _attend(layer.self_attn, q, q, queries))
    kp = keys + key_pe
    queries = layer.norm2(queries + _attend(layer.cross_attn_token_to_image, queries + query_pe, kp, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + _attend(layer.cross_attn_image_to_token, kp, q, queries))
    return queries, keys


def _deconv_weight(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    # (Cin, Cout, 2, 2) -> (Cin, 2 * 2 * Cout): output pixel (i, j) channel o
    w = conv.weight
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _deconv_add(x: torch.Tensor, conv, feat: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d(k=2, s=2) of channels-last ``x`` (B, h, w, Cin) plus
    channels-last ``feat`` (1 or B, 2h, 2w, Cout) holding the bias: one
    matmul, the pixel rearrangement fused into the add."""
    b, h, w, _ = x.shape
    cout = conv.weight.shape[1]
    y = torch.matmul(x, _deconv_weight(conv)).view(b, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
    out = feat.view(feat.shape[0], h, 2, w, 2, cout) + y
    return out.reshape(b, 2 * h, 2 * w, cout)


def _frame_cache(model, image_embed: torch.Tensor, high_res: Optional[List[torch.Tensor]]) -> _FrameCache:
    pe_mod, dec = model.sam_prompt_encoder, model.sam_mask_decoder
    block = dec.transformer.layers[0]
    src = image_embed[:1] + pe_mod.no_mask_embed.weight.reshape(1, -1, 1, 1)
    src = src.flatten(2).transpose(1, 2).contiguous()
    pe = pe_mod.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
    kpe = src + pe
    t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    k0 = _heads(t2i.k_proj(kpe), t2i.num_heads)
    v0 = _heads(t2i.v_proj(src), t2i.num_heads)
    q0 = _heads(i2t.q_proj(kpe), i2t.num_heads)
    s1 = s0 = None
    if dec.use_high_res_features:
        dc1, _, _, dc2, _ = dec.output_upscaling
        feat_s0, feat_s1 = high_res
        s1 = (feat_s1[:1] + dc1.bias.reshape(1, -1, 1, 1)).permute(0, 2, 3, 1).contiguous()
        s0 = (feat_s0[:1] + dc2.bias.reshape(1, -1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    return _FrameCache(src, k0, v0, q0, pe, s1, s0)


def _cached(model, key_tensors, make_embed, high_res) -> _FrameCache:
    params = list(model.sam_prompt_encoder.parameters()) + list(model.sam_mask_decoder.parameters())
    dev = key_tensors[0].device.type
    key = (tuple(id(t) for t in key_tensors), tuple(p._version for p in params), torch.is_autocast_enabled(dev),
           torch.get_autocast_dtype(dev))
    with _lock:
        per_model = _caches.get(model)
        if per_model is None:
            per_model = _caches[model] = OrderedDict()
        hit = per_model.get(key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], key_tensors)):
            per_model.move_to_end(key)
            return hit[1]
    entry = _frame_cache(model, make_embed(), high_res)
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
    references and checks they are still the same tensors)."""
    pe_mod, dec = model.sam_prompt_encoder, model.sam_mask_decoder
    tr = dec.transformer
    c = _cached(model, list(key_tensors), make_embed, high_res)
    n = point_coords.shape[0]
    sparse = pe_mod._embed_points(point_coords, point_labels, pad=True)
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
    i2t = b0.cross_attn_image_to_token
    k = _heads(i2t.k_proj(queries + tokens), i2t.num_heads)
    v = _heads(i2t.v_proj(queries), i2t.num_heads)
    keys = b0.norm4(c.src + i2t.out_proj(_unheads(_sdpa(c.q0, k, v))))
    key_pe = c.pe
    for layer in tr.layers[1:]:
        queries, keys = _block(layer, queries, keys, tokens, key_pe)
    attn_out = _attend(tr.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    hs = tr.norm_final_attn(queries + attn_out)

    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1 : s + 1 + dec.num_mask_tokens, :]
    h = w = int(round(keys.shape[1] ** 0.5))
    src = keys.view(n, h, w, -1)  # channels-last
    if dec.use_high_res_features:
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        up = _deconv_add(src, dc1, c.s1)
        up = act1(F.layer_norm(up, (up.shape[-1],), ln1.weight, ln1.bias, ln1.eps))
        up = act2(_deconv_add(up, dc2, c.s0))
        up = up.reshape(n, -1, up.shape[-1])
        uh, uw = 4 * h, 4 * w
    else:  # SAM2's own modules (channels-first)
        up = dec.output_upscaling(src.permute(0, 3, 1, 2))
        uh, uw = up.shape[-2:]
        up = up.flatten(2).transpose(1, 2)
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
    masks = torch.matmul(hyper_in, up.transpose(1, 2)).view(n, -1, uh, uw)
    iou_pred = dec.iou_prediction_head(iou_token_out)
    if dec.pred_obj_scores:
        obj_scores = dec.pred_obj_score_head(hs[:, 0, :])
    else:
        obj_scores = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)

    # SAM2's MaskDecoder.forward selection
    if multimask_output:
        masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
    elif dec.dynamic_multimask_via_stability and not dec.training:
        masks, iou_pred = dec._dynamic_multimask_via_stability(masks, iou_pred)
    else:
        masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
    if multimask_output and dec.use_multimask_token_for_obj_ptr:
        sam_tokens = mask_tokens_out[:, 1:]
    else:
        sam_tokens = mask_tokens_out[:, 0:1]

    # SAM2Base._forward_sam_heads after the decoder (no high-res masks)
    if model.pred_obj_scores:
        is_obj = obj_scores > 0
        masks = torch.where(is_obj[:, None, None], masks, NO_OBJ_SCORE)
    masks = masks.float()
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
