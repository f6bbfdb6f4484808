"""Attention for SAM2's bf16 inference on a CPU: two bf16 matrix products
and a softmax instead of PyTorch's CPU flash-attention kernel.

Measured on this project's AMD EPYC (AVX512-BF16, 2 threads): the flash
kernel runs SAM2.1-tiny's memory cross-attention at 512 px (1024 queries,
~7200 memory keys, width 256) in ~50 ms, the same work as two oneDNN bf16
matmuls plus a softmax in ~28 ms; four such calls a frame. Rounding: the
scores are rounded to bf16 before the softmax (the flash kernel keeps them
in float32), so outputs differ from float32 by ~10x the flash kernel's
difference; the engine's masks are tested against float32 masks
(tests/test_engine_precision.py). PyTorch offers no CPU matmul from bf16
inputs to float32 outputs, which would avoid that rounding.

``bf16_attention()`` is a scoped ``TorchFunctionMode``: inside it, calls to
``F.scaled_dot_product_attention`` made by SAM2's modules with bf16 CPU
inputs, without gradients, mask, dropout or causality, take ``attention``;
with ``linears`` (a ``onednn_linear.PackedLinears``, kept by the engine for a
propagation) so do ``F.linear`` calls under CPU bf16 autocast without
gradients (same inputs and result dtype as autocast's linear, the weight
packed once); every other call is passed on unchanged. Nothing global is
patched. Its dispatch costs a little on every torch call inside it, so the
engine enters it only where attention is large (``MIN_IMAGE_SIZE``; not for
clicks).

``values_after_attention(memory_attention)`` (scoped too, during
propagation steps): the memory cross-attention applies its value
projection after the attention, an exact reordering that makes its second
product 4x narrower.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: Bytes of bf16 scores per block of queries (the scores are never held for all queries at once: at 1024 px the
#: memory attention's would take 230 MB). Blocks of 256 queries (3.5 MB at 512 px) were as fast on whole frames.
BLOCK_BYTES = 16 << 20
#: The engine enters the mode for models at this size and above (``StreamingSAM2(cpu_attention=None)``): at 256 px
#: (the demo-size model, 7 memories of 256 tokens) the mode's per-call dispatch cost more than the small attention
#: calls saved (52 vs 42 ms a frame in bf16); at 512 px SAM2.1-tiny's frames took 0.84x the time with it.
MIN_IMAGE_SIZE = 512


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None) -> torch.Tensor:
    """softmax(q k^T * scale) v over the last two dimensions, in blocks of
    queries; ``scale`` defaults to 1 / sqrt(q.shape[-1]) as in SDPA."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
    per_row = max(1, math.prod(q.shape[:-2]) * k.shape[-2] * q.element_size())  # score bytes per query row
    rows = max(1, BLOCK_BYTES // per_row)
    # Laid out once, not per block: bmm copies a transposed or strided operand on every call (at 1024 px a
    # memory cross-attention's k^T, 14 MB, was copied for each of ~14 blocks). The scale goes on the queries
    # (n x d) instead of the scores (n x keys): one pass less over the largest tensor.
    kt = k.transpose(-2, -1).contiguous()
    v = v.contiguous()
    q = q * scale
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], kt)
        out[..., start:start + rows, :] = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out


def _eligible(args, kwargs) -> bool:
    if len(args) < 3 or torch.is_grad_enabled():
        return False
    q, k, v = args[:3]
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.device.type == "cpu"
               for t in (q, k, v)):
        return False
    if len(args) > 3 or set(kwargs) - {"dropout_p", "scale"}:  # a mask, causality or GQA: not ours
        return False
    return float(kwargs.get("dropout_p", 0.0)) == 0.0 and q.dim() == k.dim() == v.dim()


def _linear_args(args, kwargs):
    """(x, weight, bias) of an ``F.linear`` call that autocast would run in
    bf16 on the CPU without gradients, else None."""
    if torch.is_grad_enabled() or not torch.is_autocast_enabled("cpu") \
            or torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    names = ("input", "weight", "bias")
    if len(args) > 3 or set(kwargs) - set(names[len(args):]):
        return None
    call = dict(zip(names, args), **kwargs)
    x, weight, bias = call.get("input"), call.get("weight"), call.get("bias")
    floats = (torch.float32, torch.bfloat16)
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.device.type != "cpu" \
            or x.dtype not in floats or weight.dtype not in floats or weight.dim() != 2 or x.dim() < 1 \
            or x.numel() == 0 or x.shape[-1] != weight.shape[1] or weight.device.type != "cpu":
        return None
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.dtype not in floats):
        return None
    return x, weight, bias


class bf16_attention(TorchFunctionMode):
    """Context manager: SAM2's bf16 CPU attention calls take ``attention``,
    and with ``linears`` its autocast linear calls a packed oneDNN linear
    (see the module docstring)."""

    def __init__(self, linears=None) -> None:
        super().__init__()
        self.linears = linears

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and _eligible(args, kwargs):
            return attention(*args[:3], scale=kwargs.get("scale"))
        if func is F.linear and self.linears is not None:
            call = _linear_args(args, kwargs)
            out = self.linears(*call) if call is not None else None
            if out is not None:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def values_after_attention(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block, SAM2's one-head ``RoPEAttention`` layers in
    ``module`` whose values come in narrower than they go out (the memory
    attention's cross-attention: 64-channel memories, 256-channel values)
    apply their value projection after the attention instead of before:
    softmax(S) (M W^T + b) = (softmax(S) M) W^T + b, because each row of
    softmax(S) sums to 1. Exact in real arithmetic; the product over the
    ~7200 memory keys (29000 at 1024 px) runs at width 64 instead of 256 and
    the memory's value projection (7200 rows) becomes one over the queries
    (1024 rows). Measured on this CPU in bf16 (SAM2.1-tiny, medians of 15
    calls): that attention call at 512 px 17 vs 25 ms, at 1024 px 276 vs
    420 ms; whole frames 0.88-0.91x (in-process A/B). Only in bf16 autocast
    on a CPU without gradients (the fast path, whose masks are tested
    against float32 masks): any other call runs SAM2's forward unchanged, so
    float32 stays bit-equal to SAM2."""
    from sam2.modeling.sam.transformer import RoPEAttention

    from .heads import _shadowed

    # a plain linear value projection only (an adapter wrapped around it may not be affine)
    layers = [m for m in module.modules() if type(m) is RoPEAttention and m.num_heads == 1
              and type(m.v_proj) is torch.nn.Linear and m.v_proj.in_features < m.v_proj.out_features]
    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(_shadowed(layer, "forward", functools.partial(_values_after_forward, layer)))
        yield


def _values_after_forward(layer, q, k, v, num_k_exclude_rope: int = 0):
    from sam2.modeling.sam.transformer import RoPEAttention

    from .heads import _fast_cpu_dtype

    if layer.training or _fast_cpu_dtype(v.device) != torch.bfloat16:
        return RoPEAttention.forward(layer, q, k, v, num_k_exclude_rope)
    # autocast's v_proj would take the memories in bf16; here they meet the bf16 probabilities first
    return rope_attention_values_after(layer, q, k, v.to(torch.bfloat16), num_k_exclude_rope)


def rope_attention_values_after(layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                num_k_exclude_rope: int = 0) -> torch.Tensor:
    """SAM2's ``RoPEAttention.forward`` (sam2/modeling/sam/transformer.py)
    for a one-head layer, with ``v_proj`` applied after the attention (see
    ``values_after_attention``); in any dtype."""
    from sam2.modeling.position_encoding import apply_rotary_enc

    if layer.num_heads != 1:
        raise ValueError("values after attention needs a one-head layer")
    if layer.training and layer.dropout_p > 0:  # dropped probabilities no longer sum to 1: the bias would be wrong
        raise ValueError("values after attention needs the layer in eval mode (dropout)")
    q = layer._separate_heads(layer.q_proj(q), 1)
    k = layer._separate_heads(layer.k_proj(k), 1)
    v = v.unsqueeze(1)  # (B, 1 head, keys, memory width)
    w = h = math.sqrt(q.shape[-2])
    layer.freqs_cis = layer.freqs_cis.to(q.device)
    if layer.freqs_cis.shape[0] != q.shape[-2]:
        layer.freqs_cis = layer.compute_cis(end_x=w, end_y=h).to(q.device)
    if q.shape[-2] != k.shape[-2]:
        assert layer.rope_k_repeat
    num_k_rope = k.size(-2) - num_k_exclude_rope
    q, k[:, :, :num_k_rope] = apply_rotary_enc(q, k[:, :, :num_k_rope], freqs_cis=layer.freqs_cis,
                                               repeat_freqs_k=layer.rope_k_repeat)
    out = F.scaled_dot_product_attention(q, k, v.to(q.dtype))
    return layer.out_proj(layer.v_proj(layer._recombine_heads(out)))
