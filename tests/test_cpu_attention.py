"""bf16 attention for SAM2 on a CPU (``sam2_engine.cpu_attention``): values
against float32 attention, which calls the mode takes and which it passes on,
and that the engine uses it only in bf16 on a CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surgseg_core.sam2_engine import StreamingSAM2, build_model, cpu_attention


def _qkv(shape_q, shape_k, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g)
    k = torch.randn(*shape_k, generator=g)
    v = torch.randn(*shape_k, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("shape_q, shape_k, strided", [((1, 1, 300, 64), (1, 1, 900, 64), False),  # memory cross-attention
                                                       ((9, 4, 49, 96), (9, 4, 49, 96), False),  # windowed self-attention
                                                       ((1, 4, 256, 96), (1, 4, 256, 96), True)])  # Hiera's global
def test_attention_is_softmax_qk_v_in_blocks(shape_q, shape_k, strided, monkeypatch):
    q, k, v = _qkv(shape_q, shape_k)
    if strided:  # as Hiera hands them over: (B, tokens, heads, d) transposed to (B, heads, tokens, d)
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
        assert not q.is_contiguous()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    monkeypatch.setattr(cpu_attention, "BLOCK_BYTES", 1000)  # many query blocks, as at 1024 px
    out = cpu_attention.attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # bf16 rounding of inputs, scores and probabilities: within a few hundredths of float32
    assert (out.float() - ref).abs().max() < 0.05
    # hand-computed for one query row of the first batch/head
    s = (q[0, 0, 5].float() @ k[0, 0].float().T) / np.sqrt(q.shape[-1])
    row = torch.softmax(s, -1) @ v[0, 0].float()
    torch.testing.assert_close(out[0, 0, 5].float(), row, atol=0.05, rtol=0.05)
    scaled = cpu_attention.attention(q, k, v, scale=0.5)
    torch.testing.assert_close(scaled.float(), F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                              scale=0.5), atol=0.08, rtol=0.05)


def test_mode_takes_only_plain_bf16_inference_calls(monkeypatch):
    calls = []
    real = cpu_attention.attention
    monkeypatch.setattr(cpu_attention, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv((1, 2, 16, 8), (1, 2, 32, 8))
    mask = torch.ones(16, 32, dtype=torch.bool)
    with torch.no_grad(), cpu_attention.bf16_attention():
        F.scaled_dot_product_attention(q, k, v)
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        assert len(calls) == 2
        F.scaled_dot_product_attention(q.float(), k.float(), v.float())  # float32: the kernel
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # a mask: the kernel
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert len(calls) == 2
    with torch.enable_grad(), cpu_attention.bf16_attention():  # training: the kernel (and its gradients)
        qg = q.clone().requires_grad_(True)
        F.scaled_dot_product_attention(qg, k, v).sum().backward()
    assert len(calls) == 2 and qg.grad is not None
    with torch.no_grad():
        F.scaled_dot_product_attention(q, k, v)  # outside the mode: nothing diverted
    assert len(calls) == 2


def test_mode_runs_autocast_linears_with_packed_weights():
    from surgseg_core.sam2_engine.onednn_linear import PackedLinears

    lin = torch.nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    linears = PackedLinears()
    packed = []
    real = PackedLinears.__call__

    def counting(self, *args):
        out = real(self, *args)
        packed.append(out is not None)
        return out

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = lin(x)  # autocast's bf16 linear
        # nested, as the engine nests the image encoder's mode in the tracking step's: one packed copy
        with cpu_attention.bf16_attention(linears=linears), cpu_attention.bf16_attention(linears=linears):
            PackedLinears.__call__ = counting
            try:
                got = lin(x)
                again = F.linear(x.bfloat16(), weight=lin.weight)  # keywords, no bias, bf16 input
            finally:
                PackedLinears.__call__ = real
    if not any(packed):
        pytest.skip("this torch has no oneDNN packed linear (the mode then leaves F.linear to autocast)")
    # two calls through the packed linear, one weight packed once (its probe ran as a plain F.linear)
    assert packed.count(True) == 2 and len(linears) == 1
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(again.float(), F.linear(x, lin.weight).float(), atol=3e-2, rtol=3e-2)
    with torch.no_grad():
        lin.weight.mul_(-1)  # an update in place (optimizer step, load_state_dict): packed again
        with torch.autocast("cpu", dtype=torch.bfloat16), cpu_attention.bf16_attention(linears=linears):
            flipped = lin(x)
        torch.testing.assert_close(flipped.float(), F.linear(x, lin.weight, lin.bias).float(), atol=3e-2, rtol=3e-2)
        with cpu_attention.bf16_attention(linears=linears):  # no autocast: float32 arithmetic, untouched
            assert lin(x).dtype == torch.float32
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16), \
            cpu_attention.bf16_attention(linears=linears):  # training: autocast's own linear and its gradients
        xg = x.clone().requires_grad_(True)
        lin(xg).float().sum().backward()
    assert xg.grad is not None


@pytest.mark.parametrize("precision, enabled, diverted", [("bf16", True, True), ("bf16", False, False),
                                                          ("fp32", True, False), ("bf16", None, False)])
def test_engine_uses_it_in_bf16_on_a_cpu(monkeypatch, precision, enabled, diverted):
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(2, 3, 96, 128)
    frames = np.stack([clip.frame(i).image for i in range(3)])
    calls = []
    real = cpu_attention.attention
    monkeypatch.setattr(cpu_attention, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    from surgseg_core.sam2_engine.onednn_linear import PackedLinears

    linear_calls = []
    real_linear = PackedLinears.__call__
    monkeypatch.setattr(PackedLinears, "__call__", lambda self, *a: linear_calls.append(1) or real_linear(self, *a))
    value_calls = []
    real_values = cpu_attention.rope_attention_values_after
    monkeypatch.setattr(cpu_attention, "rope_attention_values_after",
                        lambda *a, **kw: value_calls.append(1) or real_values(*a, **kw))
    model = build_model("surgseg_tiny", device="cpu", seed=0)
    engine = StreamingSAM2(model, frames, precision=precision, cpu_attention=enabled)
    engine.add_points(0, 1, [[60, 40]], [1])
    assert not linear_calls  # a prompt's encoding: autocast's own linears
    got = []
    engine.propagate(lambda r: got.append(r.frame_idx))
    assert got == [0, 1, 2]
    assert bool(calls) == diverted
    assert bool(value_calls) == diverted  # the memory attention's values projected after the attention
    assert "forward" not in model.memory_attention.layers[0].cross_attn_image.__dict__
    assert bool(linear_calls) == diverted and engine._linears is None  # packed for one propagation only
    assert engine.provenance()["options"]["cpu_attention"] == diverted  # the record says which arithmetic ran
    if enabled is None:  # default: from MIN_IMAGE_SIZE px (this tiny model works at 128)
        assert model.image_size < cpu_attention.MIN_IMAGE_SIZE and not engine.cpu_attention


def _cross_attention(seed=0):
    """The memory attention's cross-attention of a random-init SAM2 (one head, 64-wide memories, 128-wide values)."""
    model = build_model("surgseg_tiny", device="cpu", seed=seed)
    layer = model.memory_attention.layers[0].cross_attn_image
    assert layer.num_heads == 1 and layer.v_proj.in_features < layer.v_proj.out_features
    return model, layer.eval()


def _memory_inputs(layer, tokens=16, memories=3, pointers=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, tokens, layer.q_proj.in_features, generator=g)
    m = torch.randn(2, memories * tokens + pointers, layer.k_proj.in_features, generator=g)
    return q, m


def test_values_after_attention_equals_sams_forward_in_float32():
    """softmax(S) (M W^T + b) = (softmax(S) M) W^T + b: SAM2's own forward
    (values projected first) and the reordered one agree in float32, RoPE on
    the memory keys repeated per memory and skipped on the object pointers."""
    from sam2.modeling.sam.transformer import RoPEAttention

    _, layer = _cross_attention()
    q, m = _memory_inputs(layer)
    with torch.no_grad():
        want = RoPEAttention.forward(layer, q, m.clone(), m.clone(), num_k_exclude_rope=8)
        got = cpu_attention.rope_attention_values_after(layer, q, m.clone(), m.clone(), num_k_exclude_rope=8)
        # hand-computed without RoPE (a layer whose rotation is the identity): P (M W^T + b) vs (P M) W^T + b
        p = torch.softmax(torch.randn(5, 7), -1)
        mm, w, b = torch.randn(7, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
        torch.testing.assert_close(p.double() @ (mm @ w.T + b), (p.double() @ mm) @ w.T + b)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    layer.train()
    with pytest.raises(ValueError, match="eval"):  # dropout: probabilities no longer sum to 1
        cpu_attention.rope_attention_values_after(layer, q, m.clone(), m.clone())


def test_values_after_attention_runs_only_on_the_bf16_inference_path():
    model, layer = _cross_attention()
    model.eval()
    q, m = _memory_inputs(layer)
    self_attn = model.memory_attention.layers[0].self_attn  # values as wide as they come in: not reordered
    calls = []
    real = cpu_attention.rope_attention_values_after

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    cpu_attention.rope_attention_values_after = counting
    try:
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                want = layer(q, m.clone(), m.clone(), num_k_exclude_rope=8)
            plain = layer(q, m.clone(), m.clone(), num_k_exclude_rope=8)
            with cpu_attention.values_after_attention(model.memory_attention):
                assert "forward" in layer.__dict__ and "forward" not in self_attn.__dict__
                same = layer(q, m.clone(), m.clone(), num_k_exclude_rope=8)  # float32: SAM2's forward, bit for bit
                assert not calls
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    got = layer(q, m.clone(), m.clone(), num_k_exclude_rope=8)
                assert len(calls) == 1
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16), \
                cpu_attention.values_after_attention(model.memory_attention):  # training: SAM2's forward
            layer(q.requires_grad_(True), m.clone(), m.clone(), num_k_exclude_rope=8).float().sum().backward()
    finally:
        cpu_attention.rope_attention_values_after = real
    assert len(calls) == 1 and q.grad is not None
    assert "forward" not in layer.__dict__  # nothing left on the module
    assert torch.equal(same, plain)
    assert got.dtype == want.dtype == torch.bfloat16
    # bf16 rounding in a different order: within bf16's noise of autocast's own forward
    assert (got.float() - want.float()).abs().max() < 0.05 * want.float().abs().max()
