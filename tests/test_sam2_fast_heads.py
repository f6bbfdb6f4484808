"""fast_heads: SAM2's prompt encoder + mask decoder with per-frame cached
image work gives SAM2's own logits (``_forward_sam_heads``) up to float
rounding, for points, boxes, negative clicks, several prompts, multimask on
and off; mask inputs and gradients fall back to SAM2's path; the cache
follows the frame tensors and the weights. Random-init models, small sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from surgseg_core.sam2_engine import ClickSession, StreamingSAM2, build_model, decode_masks, encode_frames
from surgseg_core.sam2_engine import fast_heads

ATOL = 1e-4


def _model(config: str, size: int, present: bool):
    m = build_model(config, device="cpu", seed=0, image_size=size)
    if present:  # objects "present", so masks are not all NO_OBJ_SCORE
        with torch.no_grad():
            m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return m


@pytest.fixture(scope="module", params=[("surgseg_tiny", 256, True), ("sam2.1_hiera_tiny", 256, True),
                                        ("sam2.1_hiera_tiny", 384, False)], ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request):
    config, size, present = request.param
    torch.manual_seed(1)
    model = _model(config, size, present)
    with torch.inference_mode():
        feats = encode_frames(model, torch.randn(1, 3, size, size))
    return model, feats


def _prompts(size: int, n: int):
    g = torch.Generator().manual_seed(n)
    coords = torch.rand(n, 3, 2, generator=g) * size
    labels = torch.tensor([[1, 0, 1]] * n, dtype=torch.int32)  # a negative click among positives
    x0 = torch.rand(n, 2, generator=g) * size / 2
    boxes = torch.cat([x0, x0 + size / 3], 1)
    return [
        dict(point_coords=coords[:, :1], point_labels=labels[:, :1]),
        dict(point_coords=coords, point_labels=labels),
        dict(boxes=boxes),
        dict(boxes=boxes, point_coords=coords[:, 1:], point_labels=labels[:, 1:]),
    ]


def _close(fast, ref):
    for name in ("masks", "ious", "best_masks", "object_score_logits", "obj_ptr"):
        a, b = getattr(fast, name), getattr(ref, name)
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("multimask", [False, True])
def test_fast_heads_equal_sam2_forward_sam_heads(setup, n, multimask):
    model, feats = setup
    size = model.image_size
    with torch.inference_mode():
        for kw in _prompts(size, n):
            ref = decode_masks(model, feats, multimask_output=multimask, fast=False, **kw)
            fast = decode_masks(model, feats, multimask_output=multimask, **kw)
            again = decode_masks(model, feats, multimask_output=multimask, **kw)  # from the frame cache
            _close(fast, ref)
            _close(again, ref)
            assert fast.masks.shape == (n, 3 if multimask else 1, size // 4, size // 4)
            # the same masks as binary decisions (all but logits within ATOL of 0)
            decided = ref.masks.abs() > ATOL
            assert torch.equal((fast.masks > 0)[decided], (ref.masks > 0)[decided])


def test_fast_heads_given_image_embed_and_fallbacks(setup):
    model, feats = setup
    size = model.image_size
    kw = _prompts(size, 2)[1]
    with torch.inference_mode():
        embed = decode_masks.__globals__["no_memory_embedding"](model, feats)
        ref = decode_masks(model, feats, image_embed=embed, fast=False, **kw)
        _close(decode_masks(model, feats, image_embed=embed, **kw), ref)
        # mask inputs: SAM2's own path, bit for bit
        mask = torch.randn(2, 1, size // 4, size // 4)
        a = decode_masks(model, feats, mask_inputs=mask, **kw)
        b = decode_masks(model, feats, mask_inputs=mask, fast=False, **kw)
        assert torch.equal(a.masks, b.masks)
    # gradients enabled: SAM2's path (training), gradients reach the decoder
    out = decode_masks(model, feats, **kw)
    out.masks.sum().backward()
    assert model.sam_mask_decoder.output_upscaling[0].weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_fast_heads_cache_follows_frames_and_weights():
    torch.manual_seed(2)
    model = _model("surgseg_tiny", 256, True)
    kw = _prompts(256, 1)[1]
    with torch.inference_mode():
        f1 = encode_frames(model, torch.randn(1, 3, 256, 256))
        f2 = encode_frames(model, torch.randn(1, 3, 256, 256))
        a1 = decode_masks(model, f1, **kw)
        a2 = decode_masks(model, f2, **kw)
        assert not torch.allclose(a1.masks, a2.masks)
        _close(decode_masks(model, f1, **kw), decode_masks(model, f1, fast=False, **kw))
        assert len(fast_heads._caches[model]) <= fast_heads.MAX_FRAMES
    # a weight change (e.g. a training step) invalidates the cached projections
    with torch.no_grad():
        model.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.5)
        model.sam_prompt_encoder.no_mask_embed.weight.add_(0.3)
    with torch.inference_mode():
        changed = decode_masks(model, f1, **kw)
        _close(changed, decode_masks(model, f1, fast=False, **kw))
        assert not torch.allclose(changed.masks, a1.masks)
    fast_heads.clear_cache(model)
    assert model not in fast_heads._caches


def test_click_session_fast_clicks_match_sam2_track_step():
    """The preview's fast clicks give the masks of SAM2's own track_step
    (an engine without fast_clicks), clicks and boxes, several objects."""
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(3, 3, 96, 128)
    frames = np.stack([clip.frame(i).image for i in range(3)])
    model = _model("surgseg_tiny", 256, True)
    prompts = [{"frame": 1, "obj_id": 1, "points": [[30, 40], [50, 45]], "labels": [1, 0], "box": None},
               {"frame": 1, "obj_id": 2, "points": [[90, 60]], "labels": [1], "box": [70, 40, 120, 90]}]
    session = ClickSession(precision="fp32")
    got = session.segment_frame(frames, model, 1, prompts)
    assert session.engine(frames, model).fast_clicks
    ref_engine = StreamingSAM2(model, frames, precision="fp32")
    assert not ref_engine.fast_clicks
    ref_engine.add_points(1, 1, [[30, 40], [50, 45]], [1, 0])
    ref = ref_engine.add_points(1, 2, [[90, 60]], [1], box=[70, 40, 120, 90])
    torch.testing.assert_close(got.logits, ref.logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got.object_scores, ref.object_scores, atol=ATOL)
    # the pending outputs (what a propagation would read) agree too
    for obj in (1, 2):
        a = session.engine(frames, model).objects[obj].pending[1][0]
        b = ref_engine.objects[obj].pending[1][0]
        torch.testing.assert_close(a["obj_ptr"], b["obj_ptr"], rtol=0, atol=ATOL)
        torch.testing.assert_close(a["pred_masks"], b["pred_masks"], rtol=0, atol=ATOL)


def test_click_session_fast_clicks_under_bf16_precision():
    """The engine's "bf16" precision (autocast over the heads) runs the fast
    path too: masks agree with SAM2's own bf16 path and with float32."""
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(4, 2, 96, 128)
    frames = np.stack([clip.frame(i).image for i in range(2)])
    model = _model("sam2.1_hiera_tiny", 256, True)
    prompts = [{"frame": 0, "obj_id": 1, "points": [[40, 50], [70, 45]], "labels": [1, 1], "box": None}]
    got = {name: ClickSession(precision=prec, fast_clicks=fast).segment_frame(frames, model, 0, prompts).logits
           for name, prec, fast in [("fp32", "fp32", False), ("bf16_fast", "bf16", True), ("bf16_sam2", "bf16", False)]}

    def iou(a, b):
        a, b = a > 0, b > 0
        return float((a & b).sum()) / max(1, int((a | b).sum()))

    assert iou(got["bf16_fast"], got["bf16_sam2"]) > 0.98
    assert iou(got["bf16_fast"], got["fp32"]) > 0.98
