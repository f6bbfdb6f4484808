"""The streaming engine is SAM2: same masks as SAM2VideoPredictor for the
same model, frames and prompts, in bounded memory.

All models are randomly initialised surgseg_tiny SAM2 models (no weights can
be downloaded here). A random SAM2 decoder almost never predicts "object
present", which would make every mask the constant NO_OBJ_SCORE and the
comparison empty; so the object-score head's output bias is set to +10.
The masks are then the untouched random decoder's logits, and every test
checks they are non-trivial (some pixels in, some out).

Every engine here runs in float32 (``precision="fp32"``), SAM2's own CPU
path: the bit-level comparison holds there; the faster default precision
is compared with float32 masks in tests/test_engine_precision.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sam2.sam2_video_predictor as svp
from surgseg_core.errors import Cancelled, ConfigError, VideoError
from surgseg_core.progress import CancelToken
from surgseg_core.sam2_engine import (
    ArrayWriter,
    PngLabelWriter,
    StreamingSAM2,
    build_model,
    preprocess_frame,
)

N_FRAMES, H, W = 10, 96, 128
TOL = 1e-4  # float32, batched vs per-object attention


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(3, N_FRAMES, H, W)
    return np.stack([clip.frame(i).image for i in range(N_FRAMES)])


@pytest.fixture(scope="module")
def model():
    m = build_model("surgseg_tiny", device="cpu", seed=0)
    with torch.no_grad():
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return m


def _clear_obj_mem(self, state, frame_idx, obj_idx):
    # sam2 1.1.0 calls this method but ships it under another name
    # (_clear_non_cond_mem_around_input, all objects); this is its per-object
    # intent so SAM2's own flag can serve as the reference.
    r = self.memory_temporal_stride_for_eval
    outs = state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
    for t in range(frame_idx - r * self.num_maskmem, frame_idx + r * self.num_maskmem + 1):
        outs.pop(t, None)


@pytest.fixture
def reference(model, frames, monkeypatch):
    """SAM2VideoPredictor state on the very same preprocessed frames."""
    images = torch.stack([preprocess_frame(f, model.image_size) for f in frames])
    monkeypatch.setattr(svp, "load_video_frames", lambda **kw: (images.clone(), H, W))
    monkeypatch.setattr(type(model), "_clear_obj_non_cond_mem_around_input", _clear_obj_mem, raising=False)
    monkeypatch.setattr(model, "add_all_frames_to_correct_as_cond", True)
    monkeypatch.setattr(model, "clear_non_cond_mem_around_input", True)

    def make():
        with _quiet():
            return model.init_state("frames-from-tensor")

    return make


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _ref_propagate(model, state, start, reverse=False):
    with _quiet():
        return [(f, m[:, 0].cpu()) for f, _, m in model.propagate_in_video(state, start_frame_idx=start, reverse=reverse)]


def _ours_propagate(engine, **kw):
    got = []
    engine.propagate(lambda r: got.append((r.frame_idx, r.logits.clone())), **kw)
    return got


def _assert_same(ref, ours):
    assert [f for f, _ in ref] == [f for f, _ in ours]
    for (f, a), (_, b) in zip(ref, ours):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=TOL, rtol=0), f"frame {f}: max diff {(a - b).abs().max()}"
        assert torch.equal(a > 0, b > 0) or ((a > 0) != (b > 0)).sum() <= 2  # only ties at 0 may flip
    masks = torch.stack([b for _, b in ours]) > 0
    assert masks.any() and not masks.all(), "test input gave trivial masks"


def _disk_mask(cy, cx, r):
    yy, xx = np.mgrid[0:H, 0:W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_points_forward_single_object(model, frames, reference):
    state = reference()
    engine = StreamingSAM2(model, frames, precision="fp32")
    _, _, a = model.add_new_points_or_box(state, 3, 1, points=[[60, 40], [20, 70]], labels=[1, 0])
    b = engine.add_points(3, 1, [[60, 40], [20, 70]], [1, 0])
    assert torch.allclose(a[:, 0].cpu(), b.logits, atol=TOL)
    _assert_same(_ref_propagate(model, state, 3), _ours_propagate(engine, start=3))


def test_points_and_box_two_objects_both_directions(model, frames, reference):
    state = reference()
    engine = StreamingSAM2(model, frames, precision="fp32")
    model.add_new_points_or_box(state, 6, 1, points=[[60, 40]], labels=[1])
    model.add_new_points_or_box(state, 6, 2, box=[80, 10, 120, 50])
    engine.add_points(6, 1, [[60, 40]], [1])
    b = engine.add_box(6, 2, [80, 10, 120, 50])
    assert b.obj_ids == [1, 2]
    ref = _ref_propagate(model, state, 6) + _ref_propagate(model, state, 6, reverse=True)
    ours = _ours_propagate(engine, start=6, direction="both")
    _assert_same(ref, ours)


def test_mask_and_points_on_different_frames_backward(model, frames, reference):
    state = reference()
    engine = StreamingSAM2(model, frames, precision="fp32")
    mask = _disk_mask(50, 60, 20)
    # object 2 has two prompted frames, object 1 one: two memory layouts
    # (two batches per frame). Every object needs a prompt at or after the
    # start: SAM2 itself fails on CPU (bf16/float32 mismatch) on a frame with
    # no object pointer; our engine does not (see _merge).
    model.add_new_mask(state, 9, 1, mask)
    model.add_new_points_or_box(state, 9, 2, points=[[30, 30]], labels=[1])
    model.add_new_points_or_box(state, 5, 2, points=[[40, 30]], labels=[1])
    engine.add_mask(9, 1, mask)
    engine.add_points(9, 2, [[30, 30]], [1])
    engine.add_points(5, 2, [[40, 30]], [1])
    _assert_same(_ref_propagate(model, state, 9, reverse=True), _ours_propagate(engine, start=9, direction="backward"))


def test_correction_becomes_prompt_and_propagation_resumes(model, frames, reference):
    state = reference()
    engine = StreamingSAM2(model, frames, precision="fp32")
    model.add_new_points_or_box(state, 0, 1, points=[[60, 40]], labels=[1])
    engine.add_points(0, 1, [[60, 40]], [1])
    _assert_same(_ref_propagate(model, state, 0), _ours_propagate(engine))
    # a click on an already propagated frame: a correction
    _, _, a = model.add_new_points_or_box(state, 7, 1, points=[[100, 70]], labels=[0], clear_old_points=False)
    b = engine.add_points(7, 1, [[100, 70]], [0], clear_old=False)
    assert torch.allclose(a[:, 0].cpu(), b.logits, atol=TOL)
    ours = _ours_propagate(engine)  # resumes from the corrected frame by default
    assert ours[0][0] == 7
    _assert_same(_ref_propagate(model, state, 7), ours)
    assert 7 in engine.objects[1].cond  # the corrected frame is now a prompted frame


def test_max_cond_frames_in_attn_matches_sam2(model, frames, reference, monkeypatch):
    state = reference()
    monkeypatch.setattr(model, "max_cond_frames_in_attn", 2)
    engine = StreamingSAM2(model, frames, max_cond_frames_in_attn=2, precision="fp32")
    for t, x in ((0, 30), (4, 60), (8, 90)):
        model.add_new_points_or_box(state, t, 1, points=[[x, 40]], labels=[1])
        engine.add_points(t, 1, [[x, 40]], [1])
    _assert_same(_ref_propagate(model, state, 0), _ours_propagate(engine))


# ----------------------------------------------------------------- memory
class CountingFrames:
    """A lazy frame source that counts reads."""

    def __init__(self, n, base):
        self.n, self.base, self.reads = n, base, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(i)
        return np.roll(self.base[i % len(self.base)], i, axis=1)


def test_memory_stays_bounded_and_frames_read_once(model, frames):
    src = CountingFrames(48, frames)
    engine = StreamingSAM2(model, src, precision="fp32")
    engine.add_points(0, 1, [[60, 40]], [1])
    sizes = {}
    engine.propagate(lambda r: sizes.__setitem__(r.frame_idx, engine.memory_report()["memory_bytes"]))
    report = engine.memory_report()
    window = engine.policy.window  # 15 for SAM2.1 (object pointers)
    assert window == 15
    # kept: the prompted frame, the window after it and the window before the head
    assert report["objects"][1]["cond"] == [0]
    assert report["objects"][1]["non_cond"] == list(range(1, window + 1)) + list(range(47 - window, 48))
    assert sizes[47] == sizes[40]  # flat with video length
    # propagation keeps no per-frame features: only the prompted and the last frame
    assert report["cache_frames"] == [0, 47]
    # every frame decoded exactly once (frame 0 twice: set_video reads its size)
    assert sorted(src.reads) == [0] + list(range(48))
    # a correction far from the head and from the prompts: it becomes a
    # prompted frame, the memories around it are cleared and it resumes there
    engine.add_points(25, 1, [[20, 20]], [0], clear_old=False)
    assert engine.propagate() == 23  # frames 25..47
    report = engine.memory_report()["objects"][1]
    assert report["cond"] == [0, 25]
    assert report["non_cond"] == list(range(1, window + 1)) + list(range(26, 48))


def test_keep_recent_prompt_frames_policy(model, frames):
    engine = StreamingSAM2(model, frames, keep_recent_prompt_frames=2, precision="fp32")
    for t in (0, 3, 6):
        engine.add_points(t, 1, [[60, 40]], [1])
    engine.propagate(start=0)
    mem = engine.objects[1]
    cond, non_cond = engine.policy.view(mem, 8, reverse=False)
    assert sorted(cond) == [3, 6]  # the two latest at or before frame 8
    assert 0 in non_cond  # left-out prompted frames stay ordinary memories
    cond, _ = engine.policy.view(mem, 5, reverse=False)
    assert sorted(cond) == [0, 3]  # never a future prompt when streaming forward
    cond, _ = engine.policy.view(mem, 5, reverse=True)
    assert sorted(cond) == [6]  # backward: prompts at or after (only 6)


def test_cancel_keeps_written_frames_valid_and_resumes(model, frames, tmp_path):
    from PIL import Image

    engine = StreamingSAM2(model, frames, precision="fp32")
    engine.add_points(0, 1, [[60, 40]], [1])
    engine.add_box(0, 2, [80, 10, 120, 50])
    token = CancelToken()
    png = PngLabelWriter(tmp_path / "labels")
    array = np.zeros((N_FRAMES, H, W), np.uint8)
    done = []

    def sink(result):
        png(result)
        ArrayWriter(array)(result)
        done.append(result.frame_idx)
        if len(done) == 3:
            token.cancel()

    progress = []
    with pytest.raises(Cancelled):
        engine.propagate(sink, cancel=token, progress=lambda d, t, m="": progress.append((d, t)))
    assert done == [0, 1, 2]
    assert progress[-1] == (3, N_FRAMES)
    files = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert files == [f"{i:06d}.png" for i in range(3)]  # no temp files left
    for i in range(3):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "labels" / f"{i:06d}.png")), array[i])
    assert set(np.unique(array[:3])) <= {0, 1, 2} and array[:3].any()
    # resume where it stopped (into the array only: fsync-ed PNGs are slow on CI disks)
    engine.propagate(ArrayWriter(array), start=3)
    assert array[3:].any()


def test_label_map_is_argmax_over_positive_logits():
    from surgseg_core.sam2_engine import FrameResult

    logits = torch.tensor([[[2.0, -1.0, 3.0]], [[1.0, -2.0, 5.0]]])
    r = FrameResult(0, [3, 7], logits, np.zeros(2, np.float32))
    np.testing.assert_array_equal(r.label_map(), [[3, 0, 7]])
    np.testing.assert_array_equal(r.object_mask(7), [[1, 0, 1]])


def test_predict_frame_uses_cache_and_leaves_state(model, frames):
    src = CountingFrames(N_FRAMES, frames)
    engine = StreamingSAM2(model, src, precision="fp32")
    masks, ious, logits = engine.predict_frame(4, [[60, 40]], [1], multimask_output=True)
    assert masks.shape == (3, H, W) and ious.shape == (3,) and logits.shape == (3, H, W)
    reads = len(src.reads)
    masks2, _, _ = engine.predict_frame(4, box=[20, 20, 90, 80])
    assert masks2.shape == (1, H, W)
    assert len(src.reads) == reads and engine.cache.hits >= 1  # decoder only
    assert engine.objects == {}


def test_provenance_records_model_prompts_and_versions(model, frames, tmp_path):
    from importlib.metadata import version

    engine = StreamingSAM2(model, frames, precision="fp32")
    engine.add_points(2, 1, [[60, 40]], [1])
    prov = engine.provenance()
    assert prov["model"] == "random-init surgseg_tiny" and prov["checkpoint_sha256"] is None
    assert prov["config"] == "surgseg_tiny"
    assert prov["sam2_version"] == version("sam2")
    assert prov["prompts"] == [{"frame": 2, "object": 1, "points": [[60.0, 40.0]], "labels": [1], "clear_old": True}]
    path = PngLabelWriter(tmp_path).write_provenance(prov)
    assert '"surgseg_version"' in path.read_text()


def test_errors_name_the_problem(model, frames):
    engine = StreamingSAM2(model, frames, precision="fp32")
    with pytest.raises(ConfigError, match="no prompts"):
        engine.propagate()
    with pytest.raises(ConfigError, match="outside the video"):
        engine.add_points(N_FRAMES, 1, [[1, 1]], [1])
    with pytest.raises(ConfigError, match="integer >= 1"):
        engine.add_points(0, 0, [[1, 1]], [1])
    with pytest.raises(ConfigError, match="one label per point"):
        engine.add_points(0, 1, [[1, 1], [2, 2]], [1])
    with pytest.raises(ConfigError, match="1 \\(object\\) or 0"):
        engine.add_points(0, 1, [[1, 1]], [5])
    with pytest.raises(ConfigError, match="x1 >= x0"):
        engine.add_box(0, 1, [50, 50, 10, 10])
    with pytest.raises(ConfigError, match="does not match the video"):
        engine.add_mask(0, 1, np.ones((10, 10), bool))
    engine.add_points(0, 1, [[60, 40]], [1])
    with pytest.raises(ConfigError, match="direction"):
        engine.propagate(direction="sideways")
    with pytest.raises(ConfigError, match="frame range"):
        engine.propagate(frame_range=(5, 99))
    with pytest.raises(VideoError, match="len"):
        StreamingSAM2(model, object())
    with pytest.raises(VideoError, match="no frames"):
        StreamingSAM2(model, np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="build_model"):
        StreamingSAM2(model, frames, image_size=512, precision="fp32")
    with pytest.raises(ConfigError, match=">= 2"):
        StreamingSAM2(model, frames, max_cond_frames_in_attn=1, precision="fp32")
    with pytest.raises(VideoError, match="0..1"):  # float pixels must be in 0..1 (wider integers are scaled)
        StreamingSAM2(model, np.full((2, 8, 8, 3), 3.0, np.float32)).add_points(0, 1, [[1, 1]], [1])
    with pytest.raises(VideoError, match="negative"):
        StreamingSAM2(model, np.full((2, 8, 8, 3), -5, np.int32)).add_points(0, 1, [[1, 1]], [1])


def test_preprocess_frame_equals_sam2s_frame_loader(tmp_path):
    """The engine's preprocessing (numpy, on the read-ahead thread) gives
    SAM2's loader's values: PIL resize, /255, ImageNet mean/std (a PNG, so
    no JPEG round trip differs)."""
    from PIL import Image
    from sam2.utils.misc import _load_img_as_tensor

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "f.png")
    ref, h, w = _load_img_as_tensor(str(tmp_path / "f.png"), 64)
    ref = ref.float()
    ref -= torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ref /= torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    ours = preprocess_frame(frame, 64)
    assert ours.dtype == torch.float32 and ours.shape == (3, 64, 64) and (h, w) == (90, 120)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_compiled_image_encoder_gives_the_same_masks_and_compiles_once(model, frames):
    """``compile_image_encoder`` (SAM2's vos_optimized way, for GPUs): the
    image encoder goes through torch.compile, whole graph, traced once for
    the video (no recompilation frame after frame), and the masks are those
    of the uncompiled engine. The graph runs on torch.compile's eager
    backend here (the mechanism, not inductor's minutes of code generation);
    the provenance records it."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    plain = StreamingSAM2(model, frames, precision="fp32")
    compiled = StreamingSAM2(model, frames, precision="fp32",
                             compile_image_encoder={"backend": counting_backend, "fullgraph": True, "dynamic": False})
    for engine in (plain, compiled):
        engine.add_points(0, 1, [[60, 40]], [1])
    _assert_same(_ours_propagate(plain), _ours_propagate(compiled))
    assert len(graphs) == 1, f"traced {len(graphs)} times for one video"
    assert compiled.provenance()["options"]["compiled_image_encoder"] is True
    assert plain.provenance()["options"]["compiled_image_encoder"] is False
    assert "forward" not in model.image_encoder.__dict__  # the model itself is left as it was
    with pytest.raises(ConfigError, match="compile_image_encoder"):
        StreamingSAM2(model, frames, compile_image_encoder="yes")
