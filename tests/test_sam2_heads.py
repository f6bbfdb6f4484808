"""SAM2's image path as a function pair (encode_frames / decode_masks), with
and without gradients; the engine's cached frame features and prompt hook;
the click session that keeps an engine across clicks. Random-init tiny
SAM2 architecture, synthetic frames."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from surgseg_core.errors import ConfigError
from surgseg_core.sam2_engine import (
    ClickSession,
    StreamingSAM2,
    build_model,
    decode_masks,
    encode_frames,
    preprocess_frame,
)
from surgseg_core.sam2_engine.track import preview_frame

T, H, W = 6, 96, 128


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(5, T, H, W)
    return np.stack([clip.frame(i).image for i in range(T)])


@pytest.fixture(scope="module")
def model():
    m = build_model("surgseg_tiny", device="cpu", seed=0)
    with torch.no_grad():  # objects "present" so masks are not all NO_OBJ_SCORE
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return m


class EncoderCalls:
    """Counts image-encoder runs (a forward hook on SAM2's image encoder)."""

    def __init__(self, model) -> None:
        self.n = 0
        self._handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def encoder_calls(model):
    calls = EncoderCalls(model)
    yield calls
    calls.close()


def _image(model, frame) -> torch.Tensor:
    return preprocess_frame(frame, model.image_size)[None]


# ------------------------------------------------------------------ heads
def test_decode_masks_equals_the_engines_sam2_path(model, frames):
    """decode_masks on encode_frames' output gives SAM2's own first-frame
    masks (the engine's add_points runs SAM2's track_step; float32, as here)."""
    engine = StreamingSAM2(model, frames, precision="fp32")
    engine.add_points(1, 1, [[40, 30], [90, 70]], [1, 0])
    sam2_low = engine.objects[1].pending[1][0]["pred_masks"]
    s = model.image_size
    coords = torch.tensor([[[40 * s / W, 30 * s / H], [90 * s / W, 70 * s / H]]])
    with torch.inference_mode():
        feats = encode_frames(model, _image(model, frames[1]))
        # SAM2 asks for multimask output on an initial frame with one click or fewer
        out = decode_masks(model, feats, point_coords=coords, point_labels=torch.tensor([[1, 0]]))
    assert out.best_masks.shape == sam2_low.shape
    torch.testing.assert_close(out.best_masks, sam2_low, rtol=0, atol=1e-5)


def test_heads_batched_over_prompts_equal_one_at_a_time(model, frames):
    s = model.image_size
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [40.0, 30.0, 120.0, 110.0]]) * s / 128
    pts = torch.tensor([[[30.0, 30.0]], [[80.0, 70.0]]]) * s / 128
    lbl = torch.ones(2, 1, dtype=torch.int32)
    with torch.inference_mode():
        feats = encode_frames(model, _image(model, frames[2]))
        both = decode_masks(model, feats, point_coords=pts, point_labels=lbl, boxes=boxes, multimask_output=True)
        assert both.masks.shape == (2, 3, s // 4, s // 4) and both.ious.shape == (2, 3)
        for i in range(2):
            one = decode_masks(model, feats, point_coords=pts[i:i + 1], point_labels=lbl[i:i + 1],
                               boxes=boxes[i:i + 1], multimask_output=True)
            torch.testing.assert_close(both.masks[i:i + 1], one.masks, rtol=0, atol=1e-5)
            torch.testing.assert_close(both.ious[i:i + 1], one.ious, rtol=0, atol=1e-5)
        single = decode_masks(model, feats, boxes=boxes[:1], multimask_output=False)
        assert single.masks.shape == (1, 1, s // 4, s // 4)
        with pytest.raises(ConfigError, match="different batch sizes"):
            decode_masks(model, feats, point_coords=pts, point_labels=lbl, boxes=boxes[:1])
        with pytest.raises(ConfigError, match="give points"):
            decode_masks(model, feats)


def test_gradients_reach_encoder_and_decoder_through_the_pair(frames):
    model = build_model("surgseg_tiny", device="cpu", seed=3)
    with torch.no_grad():  # object present: SAM2 passes the decoder's masks through
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    model.train()
    images = torch.cat([_image(model, frames[0]), _image(model, frames[3])])
    s = model.image_size
    pts = torch.tensor([[[20.0, 30.0]], [[60.0, 50.0]]]) * s / 128
    out = decode_masks(model, encode_frames(model, images), point_coords=pts,
                       point_labels=torch.ones(2, 1, dtype=torch.int32), multimask_output=True)
    assert out.masks.requires_grad
    (out.masks.sigmoid().mean() + out.ious.mean()).backward()
    for module in (model.image_encoder, model.sam_mask_decoder, model.sam_prompt_encoder):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), type(module).__name__
    assert model.sam_mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    # and without gradients: same values, nothing recorded
    model.eval()
    with torch.no_grad():
        a = decode_masks(model, encode_frames(model, images), point_coords=pts,
                         point_labels=torch.ones(2, 1, dtype=torch.int32), multimask_output=True)
    assert not a.masks.requires_grad
    model.zero_grad()
    b = decode_masks(model, encode_frames(model, images), point_coords=pts,
                     point_labels=torch.ones(2, 1, dtype=torch.int32), multimask_output=True)
    torch.testing.assert_close(a.masks, b.masks.detach())


def test_hiera_positional_embedding_is_computed_once_per_size_without_gradients(frames, monkeypatch):
    model = build_model("surgseg_tiny", device="cpu", seed=4).eval()
    trunk = model.image_encoder.trunk
    original = type(trunk)._get_pos_embed
    calls = []

    def counting(self, hw):
        calls.append(tuple(hw))
        return original(self, hw)

    monkeypatch.setattr(type(trunk), "_get_pos_embed", counting)
    image = _image(model, frames[1])
    with torch.enable_grad():  # training path: Hiera's own computation every forward
        ref = encode_frames(model, image)
        encode_frames(model, image)
    assert len(calls) == 2
    with torch.inference_mode():
        a = encode_frames(model, image)
        b = encode_frames(model, _image(model, frames[2]))
    assert len(calls) == 3  # once for both frames
    assert "_get_pos_embed" not in trunk.__dict__  # nothing left on the module
    for x, y in zip(a.backbone_fpn, ref.backbone_fpn):
        assert torch.equal(x, y.detach())  # bit-equal to the uncached path
    assert not torch.equal(a.backbone_fpn[-1], b.backbone_fpn[-1])
    with torch.no_grad():
        trunk.pos_embed.add_(0.5)  # an update (load_state_dict, optimizer step) invalidates it
        c = encode_frames(model, image)
    assert len(calls) == 4
    assert not torch.equal(c.backbone_fpn[-1], a.backbone_fpn[-1])


def test_neck_position_encoding_is_made_once_per_size_and_dtype_without_gradients(frames, monkeypatch):
    model = build_model("surgseg_tiny", device="cpu", seed=4).eval()
    pe = model.image_encoder.neck.position_encoding
    original = type(pe).forward
    calls = []

    def counting(self, x):
        calls.append((tuple(x.shape), x.dtype))
        return original(self, x)

    monkeypatch.setattr(type(pe), "forward", counting)
    images = torch.cat([_image(model, frames[1]), _image(model, frames[2])])
    with torch.enable_grad():  # training path: SAM2's own call per level and forward
        ref = encode_frames(model, images)
    levels = len(calls)
    assert levels >= 3
    with torch.inference_mode():
        a = encode_frames(model, images)
        b = encode_frames(model, images[:1])
    assert len(calls) == 2 * levels  # once per level for both calls and batch sizes
    assert "forward" not in pe.__dict__  # nothing left on the module
    for x, y in zip(a.vision_pos_enc, ref.vision_pos_enc):
        assert torch.equal(x, y.detach())  # the values SAM2 gives
    for x, y in zip(a.vision_pos_enc, b.vision_pos_enc):
        assert x.shape[0] == 2 and y.shape[0] == 1 and x.data_ptr() == y.data_ptr()  # one shared table
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        c = encode_frames(model, images[:1])
    assert len(calls) > 2 * levels  # a new dtype is a new entry
    for feat, pos, exact in zip(c.backbone_fpn, c.vision_pos_enc, a.vision_pos_enc):
        assert pos.dtype == feat.dtype  # what the neck's own cast gives
        assert torch.equal(pos, exact[:1].to(pos.dtype))


def test_bf16_cpu_encoding_runs_channels_last_with_the_same_features(frames, monkeypatch):
    import surgseg_core.sam2_engine.heads as heads

    model = build_model("surgseg_tiny", device="cpu", seed=4).eval()
    image = _image(model, frames[1])
    seen = []
    conv = model.image_encoder.trunk.patch_embed.proj
    conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        fp32 = encode_frames(model, image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = encode_frames(model, image)
            monkeypatch.setattr(heads, "_channels_last", lambda images: False)
            plain = encode_frames(model, image)
    assert seen == [False, True, False]  # float32 keeps SAM2's layout (bit-equality with SAM2 is tested elsewhere)
    for a, b, ref in zip(fast.backbone_fpn, plain.backbone_fpn, fp32.backbone_fpn):
        assert a.dtype == b.dtype and a.shape == b.shape
        # the layout changes bf16 rounding only: far below bf16's own distance from float32
        assert (a.float() - b.float()).abs().max() <= 0.1 * ref.abs().max()
        assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.999


@pytest.mark.parametrize("block_args, shape", [
    (dict(dim=32, dim_out=32, num_heads=2, window_size=7), (2, 10, 10, 32)),  # 10 x 10 in 7 x 7 windows
    (dict(dim=16, dim_out=32, num_heads=2, q_stride=(2, 2), window_size=8), (1, 12, 12, 16)),  # stage change
    (dict(dim=16, dim_out=16, num_heads=1, window_size=4), (1, 8, 8, 16)),  # no padding at all
])
def test_hiera_window_block_without_padding_equals_sams_block(block_args, shape):
    """A padded token is zeros after SAM2's padding, so its qkv is the bias;
    the output projection is per token: projecting only the real tokens
    gives SAM2's block output (float32, hand-made Hiera blocks)."""
    from sam2.modeling.backbones.hieradet import MultiScaleBlock

    from surgseg_core.sam2_engine.heads import window_block_without_padding

    torch.manual_seed(0)
    block = MultiScaleBlock(**block_args).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)  # biases too: a zero bias would hide a wrong fill of the padded tokens
        x = torch.randn(*shape)
        want = MultiScaleBlock.forward(block, x)
        got = window_block_without_padding(block, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hiera_skips_padded_windows_only_on_the_fast_path(frames, monkeypatch):
    import surgseg_core.sam2_engine.heads as heads

    # at 160 px the tiny model's last windowed block sees a 10 x 10 map in 8 x 8 windows: padded to 16 x 16
    model = build_model("surgseg_tiny", device="cpu", seed=4, image_size=160).eval()
    image = torch.as_tensor(preprocess_frame(frames[1], 160))[None]
    calls = []
    real = heads.window_block_without_padding
    monkeypatch.setattr(heads, "window_block_without_padding", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fp32 = encode_frames(model, image)
        assert not calls  # float32: SAM2's own blocks (bit-equality with SAM2 is tested elsewhere)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = encode_frames(model, image)
            assert len(calls) == 1
            monkeypatch.setattr(heads, "_unpadded_windows", lambda trunk, device: contextlib.nullcontext())
            plain = encode_frames(model, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # gradients: SAM2's blocks
        encode_frames(model, image)
    assert len(calls) == 1
    assert not any("forward" in b.__dict__ for b in model.image_encoder.trunk.blocks)  # nothing left behind
    for a, b, ref in zip(fast.backbone_fpn, plain.backbone_fpn, fp32.backbone_fpn):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert (a.float() - b.float()).abs().max() <= 0.1 * ref.abs().max()
        assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.999


def test_high_res_projections_fold_into_one_pointwise_convolution_on_the_fast_path(frames, monkeypatch):
    """The neck's 1 x 1 projection of Hiera's two high-resolution levels and
    the decoder's conv_s0 / conv_s1 after it are one linear map: folded into
    one convolution on the fast path (equal in float32 when called
    directly), SAM2's two convolutions elsewhere."""
    import surgseg_core.sam2_engine.heads as heads

    first, second = torch.nn.Conv2d(24, 256, 1), torch.nn.Conv2d(256, 32, 1)
    x = torch.randn(2, 24, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(heads.folded_pointwise(first, second, x), second(first(x)), atol=1e-5, rtol=1e-5)

    model = build_model("surgseg_tiny", device="cpu", seed=4).eval()
    image = _image(model, frames[1])
    calls = []
    real = heads.folded_pointwise
    monkeypatch.setattr(heads, "folded_pointwise", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fp32 = encode_frames(model, image)
        assert not calls  # float32: SAM2's convolutions (bit-equality with SAM2 is tested elsewhere)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = encode_frames(model, image)
            assert len(calls) == 2  # levels 0 and 1
            monkeypatch.setattr(heads, "_folded_high_res_projections", lambda m, d: contextlib.nullcontext())
            plain = encode_frames(model, image)
    neck = model.image_encoder.neck
    assert not any("forward" in m.__dict__ for m in list(neck.modules()) + list(model.sam_mask_decoder.modules()))
    for a, b, ref in zip(fast.backbone_fpn, plain.backbone_fpn, fp32.backbone_fpn):
        assert a.dtype == b.dtype and a.shape == b.shape == ref.shape  # 32 and 64 channels, as SAM2 hands them on
        assert (a.float() - b.float()).abs().max() <= 0.1 * ref.abs().max()
        assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.999


def test_reordered_float32_takes_the_exact_reorderings_and_stays_close_to_sam2(frames, monkeypatch):
    """The engine's "fp32-fast": inside ``reordered_float32`` a float32
    encoding without gradients folds the high-resolution projections and
    skips Hiera's padded windows (features equal SAM2's up to float
    rounding, the same layout and dtype); outside it, and with gradients,
    SAM2's own modules run (bit-equal)."""
    import surgseg_core.sam2_engine.heads as heads

    model = build_model("surgseg_tiny", device="cpu", seed=4, image_size=160).eval()  # padded windows at 160 px
    image = torch.as_tensor(preprocess_frame(frames[1], 160))[None]
    folds, windows = [], []
    real_fold, real_windows = heads.folded_pointwise, heads.window_block_without_padding
    monkeypatch.setattr(heads, "folded_pointwise", lambda *a: folds.append(1) or real_fold(*a))
    monkeypatch.setattr(heads, "window_block_without_padding", lambda *a: windows.append(1) or real_windows(*a))
    with torch.no_grad():
        plain = encode_frames(model, image)
        again = encode_frames(model, image)
        assert not folds and not windows
        with heads.reordered_float32():
            fast = encode_frames(model, image)
            assert len(folds) == 2 and len(windows) == 1
            with heads.reordered_float32(False):  # nested off: plain again
                off = encode_frames(model, image)
        assert len(folds) == 2 and len(windows) == 1
    with heads.reordered_float32():  # gradients: SAM2's modules
        encode_frames(model, image)
    assert len(folds) == 2 and len(windows) == 1
    for a, b, c, d in zip(fast.backbone_fpn, plain.backbone_fpn, again.backbone_fpn, off.backbone_fpn):
        assert torch.equal(b, c) and torch.equal(b, d)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape and a.stride() == b.stride()
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4)


# --------------------------------------------------------- engine features
def test_frame_features_are_cached(model, frames, encoder_calls):
    engine = StreamingSAM2(model, frames, precision="fp32")  # compared with a float32 encoding below
    f1 = engine.frame_features(3)
    assert encoder_calls.n == 1
    f2 = engine.frame_features(3)
    assert encoder_calls.n == 1 and all(a is b for a, b in zip(f1.backbone_fpn, f2.backbone_fpn))
    assert f1.batch == 1 and f1.image_embed.shape[-1] == model.image_size // 16
    engine.predict_frame(3, [[50, 40]], [1])
    engine.add_points(3, 1, [[50, 40]], [1])
    assert encoder_calls.n == 1
    engine.frame_features(4)
    assert encoder_calls.n == 2
    with torch.inference_mode():
        direct = encode_frames(model, _image(model, frames[3]))
    for a, b in zip(direct.backbone_fpn, f1.backbone_fpn):
        torch.testing.assert_close(a, b)


def test_prompt_hook_replaces_points_before_encoding(model, frames):
    seen = {}

    def shift(frame_idx, coords, labels, feats):
        seen.update(frame=frame_idx, coords=coords.clone(), feats=feats)
        moved = coords.clone()
        moved[..., 0] += 16.0  # model pixels
        return moved, labels

    reached = []
    handle = model.sam_prompt_encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: reached.append(kwargs["points"][0].clone()), with_kwargs=True
    )
    try:
        hooked = StreamingSAM2(model, frames, prompt_hook=shift)
        masks, _, logits = hooked.predict_frame(2, [[32, 48]], [1])
        s = model.image_size
        assert seen["frame"] == 2
        torch.testing.assert_close(seen["coords"], torch.tensor([[[32 * s / W, 48 * s / H]]]))
        assert seen["feats"].backbone_fpn[-1] is hooked.frame_features(2).backbone_fpn[-1]
        torch.testing.assert_close(reached[-1], torch.tensor([[[32 * s / W + 16, 48 * s / H]]]))
        # the same as clicking the shifted point without a hook
        plain = StreamingSAM2(model, frames)
        _, _, ref = plain.predict_frame(2, [[32 + 16 * W / s, 48]], [1])
        torch.testing.assert_close(logits, ref, rtol=0, atol=1e-4)
        # add_points goes through the hook too, and the provenance says so
        reached.clear()
        hooked.add_points(2, 1, [[32, 48]], [1])
        torch.testing.assert_close(reached[-1], torch.tensor([[[32 * s / W + 16, 48 * s / H]]]))
        entry = hooked.provenance()["prompts"][-1]
        assert entry["points"] == [[32.0, 48.0]]
        np.testing.assert_allclose(entry["points_after_hook"], [[32 + 16 * W / s, 48.0]], atol=1e-4)
        bad = StreamingSAM2(model, frames, prompt_hook=lambda t, c, lab, f: (c[0], lab))
        with pytest.raises(ConfigError, match="prompt hook returned"):
            bad.predict_frame(2, [[32, 48]], [1])
    finally:
        handle.remove()


# ------------------------------------------------------------ click session
def test_click_session_second_click_does_not_re_encode(model, frames, encoder_calls):
    session = ClickSession()
    p1 = [{"frame": 2, "obj_id": 1, "points": [[30, 40]], "labels": [1], "box": None}]
    r1 = session.segment_frame(frames, model, 2, p1)
    assert encoder_calls.n == 1 and r1.obj_ids == [1]
    p2 = p1 + [{"frame": 2, "obj_id": 2, "points": [[90, 60]], "labels": [1], "box": None},
               {"frame": 4, "obj_id": 1, "points": [[10, 10]], "labels": [1], "box": None}]
    r2 = session.segment_frame(frames, model, 2, p2)
    assert encoder_calls.n == 1 and r2.obj_ids == [1, 2] and len(session) == 1
    # the masks are those of a fresh engine given the same clicks
    fresh = StreamingSAM2(model, frames)
    fresh.add_points(2, 1, [[30, 40]], [1])
    ref = fresh.add_points(2, 2, [[90, 60]], [1])
    torch.testing.assert_close(r2.logits, ref.logits)
    base = encoder_calls.n  # the fresh engine encoded frame 2 for itself
    session.segment_frame(frames, model, 4, p2)
    assert encoder_calls.n == base + 1
    session.segment_frame(frames, model, 2, p1)  # frame 2 is still encoded
    assert encoder_calls.n == base + 1
    # another video (or model) gets its own engine; the default keeps one
    other = frames[::-1].copy()
    session.segment_frame(other, model, 2, p1)
    assert encoder_calls.n == base + 2 and len(session) == 1
    with pytest.raises(ConfigError, match="no prompts on frame 5"):
        session.segment_frame(frames, model, 5, p1)


def test_preview_frame_summary_and_sink(model, frames, encoder_calls):
    from surgseg_core.sam2_engine.outputs import ArrayWriter

    out = np.zeros((T, H, W), np.uint8)
    session = ClickSession()
    prompts = [{"frame": 1, "obj_id": 3, "box": [20, 20, 80, 70]}]
    summary = preview_frame(frames, prompts, 1, model=model, session=session, sink=ArrayWriter(out))
    assert summary["frames_written"] == 1 and summary["obj_ids"] == [3] and summary["random_weights"] is True
    assert summary["provenance"]["tracking"]["preview"] is True
    assert set(np.unique(out[1])) <= {0, 3} and out[1].any() and not out[[0, 2, 3, 4, 5]].any()
    preview_frame(frames, prompts + [{"frame": 1, "obj_id": 3, "points": [[50, 50]]}], 1, model=model, session=session)
    assert encoder_calls.n == 1
