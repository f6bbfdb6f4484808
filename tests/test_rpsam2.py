"""RP-SAM2: the shift block, its equality with plain SAM2 when untrained,
the prompt hook in the engine and click session, the loss terms against
hand-computed values, gradients through the frozen heads, candidates, the
readers, HD95 and the Table-1 summary, and the base-SAM2 check of saved
weights. Random-init tiny SAM2 (``surgseg_tiny``), synthetic frames."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _rpsam2_helpers import instrument_frames, write_image_mask
from surgseg_core.errors import ConfigError, DatasetError, WeightsError
from surgseg_core.methods.rpsam2 import loss as L
from surgseg_core.methods.rpsam2.block import ShiftBlock, apply_offset, count_parameters, scale_for_fraction
from surgseg_core.methods.rpsam2.evaluate import dice_score, hd95, summarise
from surgseg_core.methods.rpsam2.model import build_rpsam2, save_block, shift_selection

TINY = {"sam2_config": "surgseg_tiny", "seed": 0, "feature_cache": "off", "shift_mlp_dim": 256, "grid_points": 12}


def _build(**over):
    model = build_rpsam2({**TINY, **over})
    with torch.no_grad():  # objects "present" so masks are not all NO_OBJ_SCORE
        model.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


def _perturb(model, scale=0.5):
    """A block that moves points (as after training)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.shift.delta.weight.copy_(torch.randn(model.shift.delta.weight.shape, generator=g) * scale)
        model.shift.delta.bias.copy_(torch.tensor([0.3, -0.2]))


@pytest.fixture(scope="module")
def frames():
    return instrument_frames(2, 3)


@pytest.fixture(scope="module")
def model():
    return _build()


# ------------------------------------------------------------------ block
def test_parameter_count_matches_the_layer_arithmetic_at_sam2_scale():
    # C = 256, 64 x 64 embedding (any SAM2 at 1024 px), paper's 6 layers, SAM's 2048 MLP
    block = ShiftBlock(256, 64)
    per_layer = 4 * (256 * 256 + 256) + 2 * 2 * 256 + (256 * 2048 + 2048) + (2048 * 256 + 256)
    expected = 256 + 64 * 64 * 256 + 6 * per_layer + (256 * 2 + 2) + 2
    assert count_parameters(block) == expected == 8_939_780


def test_untrained_block_returns_zero_offset_and_scale_tokens_start_at_paper_value():
    block = ShiftBlock(32, 8, num_layers=2, mlp_dim=64)
    off = block(torch.randn(1, 5, 32), torch.randn(1, 32, 8, 8))
    assert torch.equal(off, torch.zeros_like(off))
    assert torch.allclose(block.scale, torch.tensor([0.1, 0.1]))
    # sigmoid(0.1) of the image side: 537 px at 1024 px
    assert math.isclose(torch.sigmoid(block.scale[0]).item() * 1024, 537.6, abs_tol=0.1)
    assert math.isclose(1 / (1 + math.exp(-scale_for_fraction(0.1))), 0.1)


def test_folded_inference_equals_the_training_arithmetic_and_bf16_stays_close():
    """Inference folds each layer's key/value projections onto the click
    side (one i* per frame instead of six layers' keys and values): the
    same offsets as the per-layer path the training uses; under a bf16
    autocast the folded path runs i* and the MLP in bf16 (the MLP packed
    once), close to float32, and a changed block (an optimizer step, here on
    a bf16-packed MLP weight and a float32 norm) is packed again."""
    torch.manual_seed(0)
    block = ShiftBlock(64, 8, num_layers=3, num_heads=8, mlp_dim=128)
    with torch.no_grad():
        block.delta.weight.normal_(0, 0.5)
        block.delta.bias.normal_(0, 0.1)
    points, image = torch.randn(2, 3, 64), torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        folded = block.image_keys(image)
        assert folded.per_layer is None and folded.frames == 2
        per_layer = block.image_keys(image, folded=False)
        assert len(per_layer.per_layer) == 3
        ref = block(points, keys=per_layer)
        assert ref.abs().max() > 0.05  # the block moves points
        assert torch.allclose(block(points, keys=folded), ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block.image_keys(image)
            assert low.image.dtype == torch.bfloat16
            got = block(points, keys=low)
        assert got.dtype == torch.float32
        assert (got - ref).abs().max() < 0.02
        block.layers[-1].norm2.bias.add_(0.5)  # in-place updates, as an optimizer step
        block.layers[0].mlp[2].weight.mul_(-1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            moved = block(points, keys=low)
        assert (moved - block(points, keys=per_layer)).abs().max() < 0.02
        assert (moved - got).abs().max() > 0.01
    with torch.enable_grad():  # training keeps the per-layer keys (gradients reach the projections)
        assert block.image_keys(image).per_layer is not None


def test_wrong_embedding_size_is_a_clear_error():
    block = ShiftBlock(32, 8, num_layers=1, mlp_dim=64)
    with pytest.raises(ConfigError, match="another SAM2 size"):
        block(torch.randn(1, 1, 32), torch.randn(1, 32, 16, 16))


def test_apply_offset_keeps_points_exactly_and_clamps_moves_to_the_image():
    pts = torch.tensor([[[3.3, 100.7], [127.0, 0.0]]])
    assert torch.equal(apply_offset(pts, torch.zeros_like(pts), 128), pts)
    moved = apply_offset(pts, torch.tensor([[[-0.5, 0.5], [0.5, -0.5]]]), 128)
    assert moved.tolist() == [[[0.0, 127.0], [127.0, 0.0]]]


def test_shift_selection_modes():
    labels = torch.tensor([[0, 1, 1, 0, 2, 3]])
    assert shift_selection(labels, "first").tolist() == [[False, True, False, False, False, False]]
    assert shift_selection(labels, "positive").tolist() == [[False, True, True, False, False, False]]
    assert shift_selection(labels, "all").tolist() == [[True, True, True, True, False, False]]
    assert not shift_selection(labels, "none").any()
    with pytest.raises(ConfigError, match="shift_points"):
        shift_selection(labels, "some")


# ---------------------------------------------- untrained == plain SAM2
def test_untrained_rpsam2_equals_plain_sam2_exactly(model, frames):
    from surgseg_core.sam2_engine import ClickSession, StreamingSAM2

    video = np.stack([f[0] for f in frames])
    clicks = [[40.0, 50.0]], [1]
    plain = StreamingSAM2(model.sam, video).add_points(1, 1, *clicks)
    hooked_engine = model.engine(video)
    hooked = hooked_engine.add_points(1, 1, *clicks)
    assert torch.equal(plain.logits, hooked.logits)
    assert np.allclose(hooked_engine.prompt_log[-1]["points_after_hook"], [[40.0, 50.0]], atol=1e-4)
    prompts = [{"frame": 2, "obj_id": 1, "points": [[70.0, 30.0], [20.0, 20.0]], "labels": [1, 0]}]
    a = ClickSession().segment_frame(video, model.sam, 2, prompts)
    b = model.click_session().segment_frame(video, model.sam, 2, prompts)
    assert torch.equal(a.logits, b.logits)
    # the function path (heads.decode_masks) too
    with torch.inference_mode():
        feats = hooked_engine.frame_features(0)
        coords, labels = torch.tensor([[[60.0, 60.0]]]), torch.ones(1, 1, dtype=torch.int32)
        out_plain, _ = model.segment(feats, coords, labels, refine=False)
        out_rp, used = model.segment(feats, coords, labels, refine=True)
    assert torch.equal(used, coords) and torch.equal(out_plain.best_masks, out_rp.best_masks)


def test_trained_block_moves_clicks_through_the_engine_hook(frames):
    m = _build(shift_points="first")
    _perturb(m)
    video = np.stack([f[0] for f in frames])
    engine = m.engine(video)
    engine.add_points(0, 1, [[40.0, 50.0], [60.0, 30.0], [10.0, 10.0]], [1, 1, 0])
    entry = engine.prompt_log[-1]
    before, after = np.array(entry["points"]), np.array(entry["points_after_hook"])
    assert not np.allclose(before[0], after[0])  # the first positive click moved
    assert np.allclose(before[1:], after[1:])  # the correction and the negative click did not
    m.shift_points = "all"
    engine.add_points(0, 1, [[40.0, 50.0], [60.0, 30.0], [10.0, 10.0]], [1, 1, 0])
    after_all = np.array(engine.prompt_log[-1]["points_after_hook"])
    assert not np.isclose(before, after_all, atol=1e-3).all(axis=1).any()
    with torch.inference_mode():  # each click is refined on its own: the batch does not change the answer
        feats = engine.frame_features(0)
        embed = m.image_embedding(feats)
        one = m.refine(torch.tensor([[[40.0, 50.0]]]), torch.ones(1, 1, dtype=torch.int32), embed, "positive")
        two = m.refine(torch.tensor([[[40.0, 50.0]], [[60.0, 30.0]]]), torch.ones(2, 1, dtype=torch.int32), embed,
                       "positive")
    assert torch.allclose(one[0], two[0], atol=1e-5)


# ------------------------------------------------------------------- loss
def test_dist_loss_matches_hand_values_and_takes_the_nearest_candidate():
    p = torch.tensor([[0.5, 0.5]])
    one = L.dist_loss(p, torch.tensor([[[0.6, 0.5]]]))
    assert math.isclose(one.item(), 0.5 * (math.exp(1.5) + 1 - 2), rel_tol=1e-6)  # 1.74084
    two = L.dist_loss(p, torch.tensor([[[0.6, 0.5], [0.5, 0.48]]]))
    assert math.isclose(two.item(), 0.5 * (1 + math.exp(0.3) - 2), rel_tol=1e-5)  # 0.17493
    padded = L.dist_loss(p, torch.tensor([[[0.6, 0.5], [0.5, 0.5]]]), valid=torch.tensor([[True, False]]))
    assert math.isclose(padded.item(), one.item(), rel_tol=1e-6)


def test_out_loss_matches_hand_values():
    mask = torch.zeros(1, 8, 8)
    mask[0, :, :4] = 1  # columns 0..3 inside
    pts = torch.tensor([[2.0, 3.0], [3.5, 3.0], [3.75, 3.0], [6.0, 3.0]])
    values = L.sample_mask(mask.expand(4, -1, -1), pts)
    assert torch.allclose(values, torch.tensor([1.0, 0.5, 0.25, 0.0]))
    out = L.out_loss(mask.expand(4, -1, -1), pts)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -math.log(0.25), -math.log(0.01)]))


def test_soft_dice_and_compound_loss_match_hand_values():
    logits = torch.tensor([[[0.0, 100.0], [-100.0, 0.0]]])  # p = 0.5, 1, 0, 0.5
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 1 - (2 * 1.5 + 1) / (2 + 2 + 1) = 0.2
    assert math.isclose(L.soft_dice_loss(logits, target).item(), 0.2, rel_tol=1e-6)
    outputs = {"logits": logits, "target_low": target, "points": torch.tensor([[50.0, 50.0]]),
               "candidates": torch.tensor([[[60.0, 50.0]]]), "target": torch.zeros(1, 100, 100), "image_size": 100}
    terms = L.compound_loss(outputs)
    assert math.isclose(terms["dist"].item(), 0.5 * (math.exp(1.5) - 1), rel_tol=1e-5)
    assert math.isclose(terms["out"].item(), -math.log(0.01), rel_tol=1e-6)
    assert math.isclose(terms["loss"].item(), 0.2 + 0.1 * terms["dist"].item() + terms["out"].item(), rel_tol=1e-6)


def test_candidates_grid_and_epsilon_selection():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[10:30, 5:25] = True  # 400 px, target 16 -> stride 5
    g = L.grid_points(mask, 16)
    assert len(g) == 16 and bool(mask[g[:, 1].long(), g[:, 0].long()].all())
    pts = torch.arange(8.0).reshape(4, 2)
    kept = L.select_candidates(pts, torch.tensor([0.80, 0.796, 0.794, 0.5]))
    assert kept.tolist() == [[0.0, 1.0], [2.0, 3.0]]  # within 0.005 of the best 0.80
    thin = torch.zeros(40, 40, dtype=torch.bool)
    thin[7, 3:30] = True  # a one-pixel line between grid rows still gets a point
    assert len(L.grid_points(thin, 2)) >= 1


def _batch(frames, size):
    from surgseg_core.methods.rpsam2.data import InstanceFrames, Sample, collate

    from pathlib import Path

    samples = [Sample(f"s{i}", Path(f"memory/{i}.png"), (lambda m=m: [(m == k, str(k)) for k in np.unique(m) if k]))
               for i, (_, m) in enumerate(frames)]
    ds = InstanceFrames(samples, size)
    items = []
    for i, (img, _) in enumerate(frames):
        ds.samples[i].read_image = (lambda img=img: img)
        items.append(ds[i])
    return collate(items)


def test_gradients_reach_the_block_through_the_frozen_heads(frames):
    m = _build(points_per_object=3)
    m.train()
    batch = _batch(frames[:2], m.image_size)
    out = m(batch)
    terms = L.compound_loss(out)
    terms["dice"].backward(retain_graph=True)
    # zero-initialised delta: its own weights get the first gradient, from Dice alone
    assert m.shift.delta.weight.grad is not None and m.shift.delta.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.sam.parameters())
    m.zero_grad()
    _perturb(m, 0.05)
    out = m(batch)
    L.compound_loss(out)["loss"].backward()
    assert m.shift.layers[0].attn.q_proj.weight.grad.abs().sum() > 0
    assert m.shift.image_pos.grad.abs().sum() > 0 and m.shift.scale.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.sam.parameters())
    # every click has candidates and they lie inside its object
    valid = out["candidate_valid"]
    assert valid.any(dim=1).all()
    cx, cy = out["candidates"][..., 0].long(), out["candidates"][..., 1].long()
    rows = torch.arange(len(cx))[:, None].expand_as(cx)
    assert bool(out["target"][rows, cy, cx][valid].bool().all())


def test_candidates_are_the_grid_points_within_epsilon_of_the_best(frames, model):
    from surgseg_core.methods.rpsam2.train import candidate_points, frame_features

    img, mask = frames[0]
    size = model.image_size
    from surgseg_core.methods.rpsam2.data import _resize_mask

    masks = torch.from_numpy(np.stack([_resize_mask(mask == k, size) for k in np.unique(mask) if k]))
    feats = frame_features(model, img)
    embed = model.image_embedding(feats)
    low = torch.nn.functional.interpolate(masks[:, None].float(), size=(size // 4, size // 4), mode="area")[:, 0]
    cands = candidate_points(model, feats, embed, masks, low)
    grids = [L.grid_points(m, 12) for m in masks]
    with torch.no_grad():  # the same batch as candidate_points, then every grid point's Dice by hand
        allg = torch.cat(grids)
        out, _ = model.segment(feats, allg[:, None], torch.ones(len(allg), 1, dtype=torch.int32), refine=False)
    start = 0
    for obj, (c, grid) in enumerate(zip(cands, grids)):
        masks_o = out.best_masks[start : start + len(grid), 0] > 0
        start += len(grid)
        d = torch.tensor([dice_score(p.numpy(), (low[obj] > 0.5).numpy()) for p in masks_o])
        expect = grid[d >= d.max() - 0.005]
        assert len(c) >= 1 and torch.equal(c, expect)


# ---------------------------------------------------------------- metrics
def test_click_margin_lets_clicks_fall_beside_the_object_within_the_margin():
    """click_margin (the demo's departure from the paper): training and
    evaluation clicks come from the pixels within the margin of the object,
    so some land beside it, none further than the margin; 0 keeps the
    paper's clicks inside."""
    from scipy.ndimage import distance_transform_edt

    from surgseg_core.methods.rpsam2.evaluate import click_points
    from surgseg_core.methods.rpsam2.train import near_region, random_points

    mask = np.zeros((40, 40), bool)
    mask[18:22, 5:35] = True  # a thin shaft, 4 px wide
    band = near_region(mask, 3.0)
    # hand check: a pixel 3 px above the shaft is in, 4 px above is out; diagonal (3, 1) is sqrt(10) > 3: out
    assert band[15, 20] and not band[14, 20] and band[18, 2] and not band[15, 3]
    assert np.array_equal(near_region(mask, 0), mask)
    dist = distance_transform_edt(~mask)
    pts = random_points(torch.from_numpy(np.stack([mask, mask])), 400, torch.Generator().manual_seed(0), margin=3.0)
    d = np.array([dist[int(y), int(x)] for x, y in pts.reshape(-1, 2).numpy()])
    assert d.max() <= 3.0 and (d > 0).mean() > 0.3  # the band is larger than the shaft
    inside = random_points(torch.from_numpy(mask[None]), 200, torch.Generator().manual_seed(0))
    assert all(mask[int(y), int(x)] for x, y in inside[0].numpy())
    near = click_points(mask, 0, 0, seeds=50, margin=3.0)
    assert max(dist[int(y), int(x)] for x, y in near) <= 3.0 and any(not mask[int(y), int(x)] for x, y in near)


def test_hd95_hand_cases():
    gt = np.zeros((1, 20), bool)
    gt[0, 0] = True
    pred = gt.copy()
    pred[0, 10] = True
    # distances pred->gt {0, 10}, gt->pred {0}: 95th percentile of [0, 0, 10] = 9.0 (linear)
    assert hd95(pred, gt) == pytest.approx(9.0)
    a = np.zeros((30, 30), bool)
    a[5:10, 5:10] = True
    b = np.zeros((30, 30), bool)
    b[5:10, 12:17] = True  # the same square 7 px to the right
    assert hd95(a, b) == pytest.approx(7.0)
    assert hd95(a, np.zeros_like(a)) == pytest.approx(math.hypot(30, 30))
    assert dice_score(a, a) == 1.0 and dice_score(a, b) == 0.0


def test_table_summary_means_and_sds_over_seeds():
    seeds = 10
    rows = {"sam2": {}, "rpsam2": {}}
    # class A: two objects; per seed k their DSC are k/20 and 0.5 -> mean per seed (k/20 + 0.5)/2
    a1 = np.stack([np.arange(seeds) / 20, np.full(seeds, 4.0)], 1)
    a2 = np.stack([np.full(seeds, 0.5), np.full(seeds, 6.0)], 1)
    b1 = np.stack([np.full(seeds, 0.9), np.arange(seeds, dtype=float)], 1)
    for method in rows:
        rows[method] = {"A": [a1, a2], "B": [b1]}
    res = summarise(rows, {"sam2": 0, "rpsam2": 0}, [True] * 10)
    per_seed_a = (np.arange(seeds) / 20 + 0.5) / 2
    ca = res["classes"]["sam2"]["A"]
    assert ca["dsc_mean"] == pytest.approx(100 * per_seed_a.mean())
    assert ca["dsc_sd"] == pytest.approx(100 * per_seed_a.std(ddof=1))
    assert ca["hd95_mean"] == pytest.approx(5.0) and ca["hd95_sd"] == pytest.approx(0.0)
    cb = res["classes"]["sam2"]["B"]
    assert res["sam2"]["avg"]["dsc_mean"] == pytest.approx((ca["dsc_mean"] + cb["dsc_mean"]) / 2)
    assert res["sam2"]["avg"]["hd95_sd"] == pytest.approx((0.0 + cb["hd95_sd"]) / 2)
    pooled = (np.arange(seeds) / 20 + 0.5 + 0.9) / 3
    assert res["sam2"]["all"]["dsc_mean"] == pytest.approx(100 * pooled.mean())
    assert "Avg." in res["table"] and "RP-SAM2 mDSC(%)" in res["table"]


def test_evaluate_untrained_gives_identical_columns(model, frames, tmp_path):
    from surgseg_core.methods.rpsam2.data import read_samples
    from surgseg_core.methods.rpsam2.evaluate import evaluate_frames

    root = write_image_mask(tmp_path / "d", frames[:2])
    res = evaluate_frames(model, read_samples(root), seeds=3)
    assert res["objects"] >= 2
    assert res["classes"]["sam2"] == res["classes"]["rpsam2"]
    assert res["refined_inside"] == 1.0  # the clicks did not move, and were drawn inside


# ----------------------------------------------------------------- readers
def test_supervisely_reader_fills_polygons_with_holes(tmp_path):
    from surgseg_core.methods.rpsam2.data import read_samples

    ds = tmp_path / "case1"
    (ds / "img").mkdir(parents=True)
    (ds / "ann").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(ds / "img" / "frame1.png")
    ann = {"size": {"height": 40, "width": 50}, "objects": [
        {"classTitle": "Slit Knife", "geometryType": "polygon",
         "points": {"exterior": [[5, 5], [25, 5], [25, 25], [5, 25]], "interior": [[[10, 10], [15, 10], [15, 15], [10, 15]]]}},
        {"classTitle": "Spatula", "geometryType": "polygon", "points": {"exterior": [[30, 2], [45, 2], [45, 8]], "interior": []}},
        {"classTitle": "ignored", "geometryType": "rectangle", "points": {"exterior": [[0, 0], [3, 3]], "interior": []}},
    ]}
    (ds / "ann" / "frame1.png.json").write_text(json.dumps(ann))
    (sample,) = read_samples(tmp_path, "auto")
    objs = sample.objects()
    assert [c for _, c in objs] == ["Slit Knife", "Spatula"]
    knife = objs[0][0]
    assert knife[20, 20] and not knife[12, 12] and not knife[30, 30]
    (ds / "ann" / "frame2.png.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="frame2.png is missing"):
        read_samples(tmp_path, "supervisely")


def _rle_encode_string(counts):
    """pycocotools' rleToString (the test's own encoder, for the decoder)."""
    s = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            s.append(chr(c + 48))
    return "".join(s)


def test_coco_reader_polygons_and_rle(tmp_path):
    from PIL import Image

    from surgseg_core.methods.rpsam2.data import read_samples, rle_decode

    truth = np.zeros((12, 10), bool)
    truth[2:9, 3:6] = True
    truth[10, 0:10] = True
    flat = truth.T.reshape(-1)  # column-major
    counts, val, run = [], False, 0
    for v in flat:
        if v == val:
            run += 1
        else:
            counts.append(run)
            val, run = v, 1
    counts.append(run)
    assert np.array_equal(rle_decode({"size": [12, 10], "counts": counts}), truth)
    assert np.array_equal(rle_decode({"size": [12, 10], "counts": _rle_encode_string(counts)}), truth)
    with pytest.raises(DatasetError, match="sum to"):
        rle_decode({"size": [12, 10], "counts": [3, 4]})
    with pytest.raises(DatasetError, match="sum to"):  # compressed and ending early (pycocotools: garbage mask)
        rle_decode({"size": [12, 10], "counts": _rle_encode_string(counts[:-2])})
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 7, "file_name": "a.png", "height": 12, "width": 10}],
            "categories": [{"id": 1, "name": "forceps"}, {"id": 2, "name": "knife"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
                            {"id": 2, "image_id": 7, "category_id": 2,
                             "segmentation": {"size": [12, 10], "counts": _rle_encode_string(counts)}}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    (sample,) = read_samples(tmp_path)
    (poly, c1), (rle, c2) = sample.objects()
    assert (c1, c2) == ("forceps", "knife") and np.array_equal(rle, truth)
    assert poly[2, 2] and not poly[6, 6]
    coco["annotations"][0]["category_id"] = 9
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="unknown category_id 9"):
        read_samples(tmp_path)[0].objects()


def test_image_mask_reader_and_unknown_layout(tmp_path, frames):
    from surgseg_core.methods.rpsam2.data import read_samples

    root = write_image_mask(tmp_path / "d", frames[:1])
    (sample,) = read_samples(root, class_names={1: "grasper"})
    objs = sample.objects()
    ids = [k for k in np.unique(frames[0][1]) if k]
    assert len(objs) == len(ids) and np.array_equal(objs[0][0], frames[0][1] == ids[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        read_samples(tmp_path / "empty")


def test_endovis_reader_on_the_real_frame(tmp_path):
    from conftest import realdata_file

    src = realdata_file("endovis17_clip_intel/frame.png").parent
    root = tmp_path / "instrument_dataset_1"
    (root / "left_frames").mkdir(parents=True)
    (root / "left_frames" / "frame000.png").symlink_to(src / "frame.png")
    for side, f in (("Left_Prograsp_Forceps_labels", "left_frame.png"), ("Right_Prograsp_Forceps_labels", "right_frame.png")):
        (root / "ground_truth" / side).mkdir(parents=True)
        (root / "ground_truth" / side / "frame000.png").symlink_to(src / f)
    from PIL import Image

    from surgseg_core.methods.rpsam2.data import read_samples

    (sample,) = read_samples(root)
    objs = sample.objects()
    assert [c for _, c in objs] == ["Prograsp_Forceps", "Prograsp_Forceps"]
    left = np.asarray(Image.open(src / "left_frame.png")) > 0
    assert np.array_equal(objs[0][0], left) and objs[0][0].shape == (1080, 1920)
    assert not np.logical_and(objs[0][0], objs[1][0]).any()


# ----------------------------------------------------------------- weights
def test_saved_block_loads_on_its_base_and_is_refused_on_another(tmp_path, frames):
    from surgseg_core.methods.rpsam2.model import load_rpsam2

    m = build_rpsam2(TINY)
    _perturb(m)
    cfg = {**TINY}
    path = save_block(m, tmp_path / "block.pt", cfg)
    loaded = load_rpsam2(path, device="cpu")
    assert torch.equal(loaded.shift.delta.weight, m.shift.delta.weight)
    assert loaded.surgseg_base["sha256"] == m.surgseg_base["sha256"]
    with pytest.raises(WeightsError, match="sha256"):
        load_rpsam2(path, {"seed": 1}, device="cpu")  # another random-init base
    with pytest.raises(WeightsError, match="surgseg_demo256"):
        load_rpsam2(path, {"sam2_config": "surgseg_demo256"}, device="cpu")


def test_packed_mlp_falls_back_to_f_linear_where_onednn_cannot_pack(monkeypatch):
    """The bf16 click path packs the MLP for oneDNN on CPU; a torch build
    without that op (or one that fails the check against ``F.linear``) gets
    ``F.linear`` with the same results instead of an error."""
    from surgseg_core.methods.rpsam2 import block as block_module

    torch.manual_seed(1)
    weight, bias = torch.randn(32, 16).bfloat16(), torch.randn(32).bfloat16()
    x = torch.randn(2, 3, 16).bfloat16()
    want = torch.relu(torch.nn.functional.linear(x, weight, bias)).float()
    calls = []
    onednn = torch.ops.mkldnn._linear_pointwise

    def counted(*args):
        calls.append(1)
        return onednn(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted, raising=False)
    packed = block_module._mlp_linear(weight, bias, True)
    calls.clear()
    assert torch.allclose(packed(x).float(), want, atol=0.05) and calls  # this CPU build packs

    def unavailable(*args, **kwargs):
        raise RuntimeError("no oneDNN packing in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unavailable, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", unavailable, raising=False)
    plain = block_module._mlp_linear(weight, bias, True)
    assert torch.equal(plain(x), torch.relu(torch.nn.functional.linear(x, weight, bias)))


def test_one_frame_bf16_click_packs_i_star_once_and_gives_the_matmul_paths_offsets(monkeypatch):
    """One frame in bf16 on a CPU: the click's two products with i* per layer
    run as oneDNN linears on i* packed once per frame (``BlockKeys.packed``);
    the offsets equal those of the ``torch.matmul`` path, several frames keep
    that path, and a torch without the oneDNN ops gets it too."""
    from surgseg_core.methods.rpsam2 import block as block_module
    from surgseg_core.methods.rpsam2.block import BlockKeys

    torch.manual_seed(2)
    block = ShiftBlock(64, 8, num_layers=2, num_heads=8, mlp_dim=128)
    with torch.no_grad():
        block.delta.weight.normal_(0, 0.5)
    points, image = torch.randn(1, 2, 64), torch.randn(1, 64, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        keys = block.image_keys(image)
        assert keys.packed is not None
        assert block.image_keys(torch.randn(2, 64, 8, 8)).packed is None  # several frames: matmuls
        got = block(points, keys=keys)
        unpacked = block(points, keys=BlockKeys(keys.image, None, None))
        assert got.abs().max() > 0.05 and torch.allclose(got, unpacked, atol=2e-3)

        def unavailable(*args, **kwargs):
            raise RuntimeError("no oneDNN packing in this build")

        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unavailable, raising=False)
        assert block_module._packed_image(keys.image[0]) is None
        assert block.image_keys(image).packed is None
