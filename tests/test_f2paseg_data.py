"""F2PASeg data: PAS / generic / CholecSeg8k readers (lazy, clear errors),
box prompts from masks, class sets and the label-map merge."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REALDATA
from surgseg_core.errors import ConfigError, DatasetError
from surgseg_core.methods.f2paseg import data as data_mod
from surgseg_core.methods.f2paseg.classes import CHOLECSEG8K, IGNORE, PAS, get_class_set, merge_class_logits
from surgseg_core.methods.f2paseg.data import (
    box_prompts,
    class_pixel_counts,
    mask_box,
    read_cholecseg8k,
    read_generic,
    read_pas,
)

H, W = 24, 32


def _frame(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (H, W, 3), dtype=np.uint8)


def _mask(i):
    m = np.zeros((H, W), np.uint8)
    m[2:10, 3 + i: 12 + i] = 1  # SF moves right
    m[14:20, 20:30] = 3 if i % 2 == 0 else 0  # IP on even frames
    return m


def _write_pas(root, split="train", cases=("case_0001", "case_0002"), n=3):
    for c in cases:
        (root / split / "image" / c).mkdir(parents=True)
        (root / split / "mask" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_frame(i)).save(root / split / "image" / c / f"{i}.png")  # lossless for the test
            Image.fromarray(_mask(i)).save(root / split / "mask" / c / f"{i}.png")
    return root


@pytest.fixture
def read_count(monkeypatch):
    calls = []
    inner = data_mod._read_image

    def counting(path):
        calls.append(path.name)
        return inner(path)

    monkeypatch.setattr(data_mod, "_read_image", counting)
    return calls


def test_pas_reader_reads_cases_lazily(tmp_path, read_count):
    clips = read_pas(_write_pas(tmp_path), "train")
    assert [c.name for c in clips] == ["case_0001", "case_0002"]
    assert read_count == []  # nothing decoded up front (headers only)
    clip = clips[1]
    assert len(clip) == 3 and clip.size == (H, W) and clip.annotated == [0, 1, 2]
    np.testing.assert_array_equal(clip.frame(2), _frame(2))
    np.testing.assert_array_equal(clip.mask(1), _mask(1))
    assert read_count == ["2.png", "1.png"]
    assert len(clip.frames) == 3 and clip.frames[0].shape == (H, W, 3)
    assert class_pixel_counts(clips) == {1: 2 * 3 * 8 * 9, 2: 0, 3: 2 * 2 * 6 * 10, 4: 0, 5: 0, 6: 0}


def test_pas_reader_errors(tmp_path):
    with pytest.raises(DatasetError, match="not in the PAS layout"):
        read_pas(tmp_path, "train")
    root = _write_pas(tmp_path / "a")
    (root / "train" / "mask" / "case_0001" / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"case_0001: no mask for frame\(s\) \[2\]"):
        read_pas(root, "train")
    root = _write_pas(tmp_path / "b")
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(root / "train" / "mask" / "case_0002" / "1.png")
    with pytest.raises(DatasetError, match=r"1.png: mask is 32x25 but the frames of clip 'case_0002' are 32x24"):
        read_pas(root, "train")
    root = _write_pas(tmp_path / "c")
    bad = _mask(0)
    bad[0, 0] = 9
    Image.fromarray(bad).save(root / "train" / "mask" / "case_0001" / "0.png")
    clip = read_pas(root, "train")[0]
    with pytest.raises(DatasetError, match=r"0.png: unknown class id\(s\) \[9\] for class set 'pas'"):
        clip.mask(0)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(root / "train" / "mask" / "case_0001" / "1.png")
    with pytest.raises(DatasetError, match="colour mask"):
        clip.mask(1)
    with pytest.raises(DatasetError, match="outside"):
        clip.frame(3)


def test_generic_frame_folder_with_sparse_masks_and_corrections_export(tmp_path):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir(), masks.mkdir()
    for i in range(12):
        Image.fromarray(_frame(i)).save(frames / f"img_{i}.png")
    for i in (0, 10):
        Image.fromarray(_mask(i)).save(masks / f"img_{i}.png")
    (clip,) = read_generic(frames, masks)
    assert len(clip) == 12 and clip.annotated == [0, 10]  # natural order: img_10 after img_9
    np.testing.assert_array_equal(clip.frame(10), _frame(10))
    np.testing.assert_array_equal(clip.mask(10), _mask(10))
    assert clip.mask(5) is None
    # a corrections export: stems <video>_f<index> from two videos -> two clips
    exp = tmp_path / "export"
    (exp / "images").mkdir(parents=True), (exp / "masks").mkdir()
    for video, idx in (("left", (3, 7)), ("right", (1,))):
        for t in idx:
            Image.fromarray(_frame(t)).save(exp / "images" / f"{video}_f{t:06d}.png")
            Image.fromarray(_mask(t)).save(exp / "masks" / f"{video}_f{t:06d}.png")
    clips = {c.name: c for c in read_generic(exp / "images", exp / "masks")}
    assert sorted(clips) == ["left", "right"] and len(clips["left"]) == 2
    np.testing.assert_array_equal(clips["left"].mask(1), _mask(7))
    # a mask without a frame is an error, not ignored
    Image.fromarray(_mask(0)).save(masks / "other_3.png")
    with pytest.raises(DatasetError, match="without a frame of the same name.*other_3"):
        read_generic(frames, masks)


def test_generic_video_with_masks_named_by_frame_index(tmp_path):
    from _video_factory import write_video

    video = write_video(tmp_path / "clip.mp4", 12, width=W * 2, height=H * 2)
    masks = tmp_path / "masks"
    masks.mkdir()
    big = np.kron(_mask(4), np.ones((2, 2), np.uint8))
    Image.fromarray(big).save(masks / "frame_000004.png")
    (clip,) = read_generic(video, masks)
    assert len(clip) == 12 and clip.annotated == [4] and clip.frame(5).shape == (2 * H, 2 * W, 3)
    np.testing.assert_array_equal(clip.mask(4), big)
    Image.fromarray(big).save(masks / "frame_000040.png")
    with pytest.raises(DatasetError, match=r"frame 40 is outside the video clip.mp4 \(0..11\)"):
        read_generic(video, masks)


def test_box_prompts_every_10_frames_per_visible_class(tmp_path):
    frames, masks = tmp_path / "f", tmp_path / "m"
    frames.mkdir(), masks.mkdir()
    for i in range(25):
        Image.fromarray(_frame(i)).save(frames / f"{i}.png")
        Image.fromarray(_mask(i)).save(masks / f"{i}.png")
    (clip,) = read_generic(frames, masks)
    prompts = box_prompts(clip)
    assert sorted(prompts) == [0, 10, 20]
    assert prompts[0] == {1: (3.0, 2.0, 11.0, 9.0), 3: (20.0, 14.0, 29.0, 19.0)}
    assert prompts[10] == {1: (13.0, 2.0, 21.0, 9.0), 3: (20.0, 14.0, 29.0, 19.0)}
    assert sorted(box_prompts(clip, start=5)) == [5, 15]
    assert box_prompts(clip, start=5)[5] == {1: (8.0, 2.0, 16.0, 9.0)}  # IP absent on odd frames
    a = box_prompts(clip, jitter=0.1, rng=np.random.default_rng(0))
    b = box_prompts(clip, jitter=0.1, rng=np.random.default_rng(0))
    assert a == b and a != prompts
    for t, boxes in a.items():
        for c, (x0, y0, x1, y1) in boxes.items():
            ref = prompts[t][c]
            bw, bh = ref[2] - ref[0] + 1, ref[3] - ref[1] + 1
            assert 0 <= x0 <= x1 <= W - 1 and 0 <= y0 <= y1 <= H - 1
            assert abs(x0 - ref[0]) <= 0.1 * bw + 1e-9 and abs(y1 - ref[3]) <= 0.1 * bh + 1e-9
    assert mask_box(np.zeros((4, 4)), 1) is None
    with pytest.raises(DatasetError, match="interval"):
        box_prompts(clip, every=0)


def test_class_sets_and_merge():
    assert PAS.names() == {1: "SF", 2: "TS", 3: "IP", 4: "CR", 5: "OCR", 6: "OP"}
    assert PAS.rare_ids == (3, 5) and len(set(PAS.colours().values())) == 6
    assert len(CHOLECSEG8K.ids) == 12 and CHOLECSEG8K.by_id(5).name == "grasper"  # + background = 13
    assert get_class_set("cholecseg8k") is CHOLECSEG8K
    custom = get_class_set([{"id": 1, "name": "tumour", "colour": [1, 2, 3]}])
    assert custom.by_id(1).colour == (1, 2, 3)
    with pytest.raises(ConfigError, match="unknown class set"):
        get_class_set("nope")
    with pytest.raises(ConfigError, match="distinct"):
        get_class_set([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    logits = torch.tensor([[[2.0, -1.0, 3.0, 0.4]], [[1.0, -2.0, 5.0, 0.3]]])  # classes 3 and 5
    np.testing.assert_array_equal(merge_class_logits(logits, [3, 5]), [[3, 0, 5, 3]])
    np.testing.assert_array_equal(merge_class_logits(logits.numpy(), [3, 5], threshold=0.5), [[3, 0, 5, 0]])
    with pytest.raises(ConfigError):
        merge_class_logits(logits, [1])


CS8K = REALDATA / "cholecseg8k_seq"


@pytest.mark.skipif(not CS8K.is_dir(), reason=f"CholecSeg8k sample not found at {CS8K} (set SURGSEG_REALDATA)")
def test_cholecseg8k_real_clip(read_count):
    # the sample's last frame (633) has no mask
    with pytest.raises(DatasetError, match=r"no mask for 1 frame\(s\): \['frame_633_endo_watershed_mask.png'\]"):
        read_cholecseg8k(CS8K)
    clip = read_cholecseg8k(CS8K, require_masks=False)
    assert len(clip) == 73 and clip.annotated == list(range(72)) and clip.size == (480, 854)
    assert read_count == []
    mask = clip.mask(0)
    raw = np.asarray(Image.open(CS8K / "frame_561_endo_watershed_mask.png"))[..., 0]
    # value table: 50 background, 31 grasper -> 5, 21 liver -> 2, 255 unlabelled edge
    assert (mask[raw == 50] == 0).all() and (mask[raw == 31] == 5).all() and (mask[raw == 21] == 2).all()
    assert (mask[raw == 255] == IGNORE).all()
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4, 5, 10, IGNORE}
    prompts = box_prompts(clip)
    assert sorted(prompts) == list(range(0, 72, 10))
    x0, y0, x1, y1 = prompts[0][5]  # the grasper: from the centre to the right, below the middle
    assert 350 < x0 < 420 and 600 < x1 < 660 and 190 < y0 < 240 and 300 < y1 < 350
    # the _endo_mask.png files of this copy hold ids only on region outlines (0 inside): refused
    endo = read_cholecseg8k(CS8K, mask_kind="endo", require_masks=False)
    with pytest.raises(DatasetError, match=r"unknown CholecSeg8k mask value\(s\) \[0\]"):
        endo.mask(0)


def test_synthetic_clip_boxes_through_the_f2paseg_engine_give_class_maps():
    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_clip
    from surgseg_core.methods.f2paseg.data import add_box_prompts
    from surgseg_core.methods.f2paseg.model import build_f2paseg
    from surgseg_core.sam2_engine import StreamingSAM2

    clip, _ = synthetic_anatomy_clip(seed=1, n_frames=12, height=96, width=128)
    model = build_f2paseg("surgseg_tiny", device="cpu", seed=0)  # random init: shapes and ids, not quality
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    engine = StreamingSAM2(model, clip.frames)
    prompts = box_prompts(clip)
    assert sorted(prompts) == [0, 10]
    assert add_box_prompts(engine, prompts) == sum(len(b) for b in prompts.values())
    assert sorted(engine.obj_ids) == sorted({c for b in prompts.values() for c in b})
    maps = [r.label_map() for r in engine.iter_propagate()]
    assert len(maps) == 12 and maps[0].shape == (96, 128)
    values = set(np.unique(np.stack(maps)).tolist())
    assert values <= {0, *engine.obj_ids} and len(values) > 2
