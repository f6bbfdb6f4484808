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
    model = build_model("surgseg_tiny", device="cpu", seed=0)
    engine = StreamingSAM2(model, frames, precision=precision, cpu_attention=enabled)
    engine.add_points(0, 1, [[60, 40]], [1])
    assert not linear_calls  # a prompt's encoding: autocast's own linears
    got = []
    engine.propagate(lambda r: got.append(r.frame_idx))
    assert got == [0, 1, 2]
    assert bool(calls) == diverted
    assert bool(linear_calls) == diverted and engine._linears is None  # packed for one propagation only
    assert engine.provenance()["options"]["cpu_attention"] == diverted  # the record says which arithmetic ran
    if enabled is None:  # default: from MIN_IMAGE_SIZE px (this tiny model works at 128)
        assert model.image_size < cpu_attention.MIN_IMAGE_SIZE and not engine.cpu_attention
