"""SAM2 trained through its video memory (methods/sam2): the clip forward,
SAM2's loss, the trainer hooks it needs, data, evaluation and a short
training run. Random-init tiny architectures on synthetic clips, CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from surgseg_core.errors import ConfigError, DatasetError, WeightsError

TINY = "surgseg_tiny"


def _sam(seed=0, **kw):
    from surgseg_core.sam2_engine.build import build_model

    return build_model(TINY, seed=seed, **kw)


def _batch(S=128, T=3, objects=(2, 1), seed=0):
    """Clips of moving rectangles: images [B, T, 3, S, S], masks [T, O, S, S]."""
    g = torch.Generator().manual_seed(seed)
    B, O = len(objects), sum(objects)
    images = torch.randn(B, T, 3, S, S, generator=g) * 0.1
    masks = torch.zeros(T, O, S, S, dtype=torch.uint8)
    obj_video = torch.tensor([b for b, n in enumerate(objects) for _ in range(n)])
    for o in range(O):
        y, x = 10 + 30 * (o % 3), 15 + 20 * o
        for t in range(T):
            masks[t, o, y + 2 * t: y + 25 + 2 * t, x + t: x + 30 + t] = 1
            images[obj_video[o], t, o % 3, y + 2 * t: y + 25 + 2 * t, x + t: x + 30 + t] += 1.5
    return {"images": images, "masks": masks, "obj_video": obj_video}


def _objects_visible(sam):
    """Random init predicts "no object" (masks -1024, no mask gradient):
    start from an object score that says "visible", as a trained model does."""
    sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)


# ------------------------------------------------------------ clip forward
def test_gradients_reach_every_trainable_parameter():
    from surgseg_core.methods.sam2.loss import multistep_loss
    from surgseg_core.methods.sam2.model import SAM2ClipModel

    torch.manual_seed(0)
    sam = _sam()
    _objects_visible(sam)
    model = SAM2ClipModel(sam, prob_box=1.0, correction_points=2, correction_frames=2).train()
    batch = _batch()
    outs = model(batch)  # box prompts + corrective clicks on frame 0 and a later frame
    assert len(outs) == 3 and len(outs[0]["multistep_pred_multimasks_high_res"]) == 3
    assert outs[1]["maskmem_features"].requires_grad  # memory encoded with gradients
    multistep_loss(outs, batch["masks"])["loss"].backward()
    model.prob_box = 0.0  # mask prompt on frame 0: SAM2's mask-as-output path
    multistep_loss(model(batch), batch["masks"])["loss"].backward()
    # objects judged absent: SAM2's learned "no object" pointer and memory embedding
    sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(-5.0)
    model.prob_box = 1.0
    multistep_loss(model(batch), batch["masks"])["loss"].backward()
    # no_mem_pos_enc: SAM2 reads it only without directly_add_no_mem_embed (all SAM 2.1 configs set it)
    unused = {"sam.no_mem_pos_enc"}
    dead = [n for n, p in model.named_parameters()
            if n not in unused and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert dead == []
    for part in ("memory_attention", "memory_encoder", "image_encoder.trunk", "obj_ptr_proj", "sam_mask_decoder"):
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(f"sam.{part}"))


def test_clip_forward_uses_the_engines_memory_rule(monkeypatch):
    """Frames see exactly what ``select_memory`` offers (one function for
    the streaming engine and training)."""
    from surgseg_core.methods.sam2 import clip as clip_mod
    from surgseg_core.sam2_engine import memory

    seen = []
    real = memory.select_memory

    def spy(cond, non_cond, frame_idx, reverse, **kw):
        c, nc = real(cond, non_cond, frame_idx, reverse, **kw)
        seen.append((frame_idx, sorted(c), sorted(nc), kw["window"]))
        return c, nc

    monkeypatch.setattr(clip_mod, "select_memory", spy)
    sam = _sam().eval()
    batch = _batch(T=4)
    with torch.no_grad():
        clip_mod.clip_forward(sam, batch["images"], batch["obj_video"],
                              {0: clip_mod.box_prompt(batch["masks"][0])})
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert seen[3][1:3] == ([0], [1, 2])
    # the engine builds its policy window with the same helper
    assert seen[0][3] == memory.memory_window(num_maskmem=sam.num_maskmem, stride=sam.memory_temporal_stride_for_eval,
                                              max_obj_ptrs=sam.max_obj_ptrs_in_encoder, num_frames=4)


def test_clip_forward_matches_the_streaming_engine():
    """In eval mode the clip forward predicts what StreamingSAM2 predicts
    for a box on frame 0 (same model, same frames)."""
    from surgseg_core.methods.sam2.clip import box_prompt, clip_forward
    from surgseg_core.sam2_engine import StreamingSAM2
    from surgseg_core.sam2_engine.engine import preprocess_frame

    sam = _sam(seed=3).eval()
    _objects_visible(sam)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 128, 128, 3), dtype=np.uint8)
    images = torch.stack([preprocess_frame(f, 128) for f in frames])[None]
    box = [20, 30, 70, 90]
    masks = torch.zeros(3, 1, 128, 128, dtype=torch.uint8)
    masks[0, 0, 30:91, 20:71] = 1
    with torch.no_grad():
        outs = clip_forward(sam, images, torch.tensor([0]), {0: box_prompt(masks[0])}, video_frames=3)
    engine = StreamingSAM2(sam, frames)
    engine.add_box(0, 1, box)
    got = {}
    engine.propagate(lambda r: got.__setitem__(r.frame_idx, r.logits[0]), direction="forward")
    for t in (1, 2):
        ours = outs[t]["pred_masks_high_res"][0, 0]
        agree = ((ours > 0) == (got[t] > 0)).float().mean()
        assert float(agree) > 0.98


def test_clip_forward_encodes_pointer_times_as_in_a_tracked_video(monkeypatch):
    """SAM2 scales object-pointer time offsets by min(num_frames, max_obj_ptrs_in_encoder) - 1. A training
    clip stands for a video users track (>= 16 frames): the clip forward passes that length, not the clip's
    (4-frame clips would encode a pointer 3 frames back as 1.0 instead of 3/15); ``video_frames`` overrides
    it, and a clip longer than the bound keeps its own length."""
    from surgseg_core.methods.sam2.clip import box_prompt, clip_forward

    sam = _sam(seed=3).eval()
    seen = []
    real = type(sam)._track_step

    def spy(self, *args):
        seen.append(args[8])  # num_frames
        return real(self, *args)

    monkeypatch.setattr(type(sam), "_track_step", spy)
    images = torch.randn(1, 3, 3, 128, 128)
    masks = torch.zeros(3, 1, 128, 128, dtype=torch.uint8)
    masks[0, 0, 30:91, 20:71] = 1
    with torch.no_grad():
        clip_forward(sam, images, torch.tensor([0]), {0: box_prompt(masks[0])})
        assert seen == [sam.max_obj_ptrs_in_encoder] * 3 and sam.max_obj_ptrs_in_encoder == 16
        seen.clear()
        clip_forward(sam, images, torch.tensor([0]), {0: box_prompt(masks[0])}, video_frames=3)
        assert seen == [3] * 3
        seen.clear()
        sam.max_obj_ptrs_in_encoder = 2
        clip_forward(sam, images, torch.tensor([0]), {0: box_prompt(masks[0])})
        assert seen == [3] * 3


# -------------------------------------------------------------------- loss
def test_loss_equals_sam2s_multistep_loss():
    pytest.importorskip("tensordict", reason="SAM2's training package needs tensordict (testing extra)")
    from training.loss_fns import MultiStepMultiMasksAndIous

    from surgseg_core.methods.sam2.loss import WEIGHTS, multistep_loss

    g = torch.Generator().manual_seed(1)
    T, O, H = 3, 4, 32
    targets = (torch.rand(T, O, H, H, generator=g) > 0.6).float()
    targets[1, 2] = 0  # an absent object: mask terms off, object-score term on
    outs = []
    for t in range(T):
        steps = [3, 1] if t == 0 else [3]
        outs.append({
            "multistep_pred_multimasks_high_res": [torch.randn(O, m, H, H, generator=g) * 3 for m in steps],
            "multistep_pred_ious": [torch.rand(O, m, generator=g) for m in steps],
            "multistep_object_score_logits": [torch.randn(O, 1, generator=g) for _ in steps],
        })
    theirs = MultiStepMultiMasksAndIous(dict(WEIGHTS), supervise_all_iou=True, iou_use_l1_loss=True,
                                        pred_obj_scores=True, focal_gamma_obj_score=0.0,
                                        focal_alpha_obj_score=-1.0)(outs, targets)
    ours = multistep_loss(outs, targets)
    for key in WEIGHTS:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours["loss"], theirs["core_loss"], rtol=1e-6, atol=1e-5)
    assert WEIGHTS == {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def test_loss_on_real_clip_outputs_equals_sam2s():
    pytest.importorskip("tensordict", reason="SAM2's training package needs tensordict (testing extra)")
    from training.loss_fns import MultiStepMultiMasksAndIous

    from surgseg_core.methods.sam2.loss import WEIGHTS, multistep_loss
    from surgseg_core.methods.sam2.model import SAM2ClipModel

    torch.manual_seed(0)
    sam = _sam()
    _objects_visible(sam)
    model = SAM2ClipModel(sam, prob_box=1.0, correction_points=1).train()
    batch = _batch()
    outs = model(batch)
    theirs = MultiStepMultiMasksAndIous(dict(WEIGHTS), supervise_all_iou=True, iou_use_l1_loss=True,
                                        pred_obj_scores=True, focal_gamma_obj_score=0.0,
                                        focal_alpha_obj_score=-1.0)(outs, batch["masks"].float())
    torch.testing.assert_close(multistep_loss(outs, batch["masks"])["loss"], theirs["core_loss"], rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------ trainer hooks
def test_frozen_modules_stay_bit_identical_and_in_eval_mode():
    from surgseg_core.methods.sam2.loss import multistep_loss
    from surgseg_core.methods.sam2.model import SAM2ClipModel, freeze_modules
    from surgseg_core.training.optim import build_optimizer, build_param_groups
    from surgseg_core.training.trainer import set_train_mode

    torch.manual_seed(0)
    sam = _sam()
    _objects_visible(sam)
    model = SAM2ClipModel(sam, prob_box=1.0)
    tops = sorted({n.split(".")[1] for n, _ in model.named_parameters()})
    freeze_modules(model, [t for t in tops if t != "memory_attention"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_train_mode(model)
    assert model.sam.memory_attention.training and not model.sam.image_encoder.training
    assert not model.sam.sam_mask_decoder.training  # frozen: dropout off, same features as inference
    cfg = {"lr": 1e-2, "weight_decay": 0.1, "layer_decay": 0.9}
    opt = build_optimizer(build_param_groups(model, cfg), cfg)
    batch = _batch()
    multistep_loss(model(batch), batch["masks"])["loss"].backward()
    opt.step()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.startswith("sam.memory_attention.") for k in changed)
    with pytest.raises(ConfigError, match="no parameters under"):
        freeze_modules(model, ["image_encodr"])


def test_layer_id_numbers_hiera_blocks_only():
    from surgseg_core.methods.sam2.model import SAM2ClipModel
    from surgseg_core.training.optim import _count_layers, build_param_groups, default_layer_id

    model = SAM2ClipModel(_sam())
    names = [n for n, _ in model.named_parameters()]
    n_layers = _count_layers(names)
    assert n_layers == 5  # surgseg_tiny's Hiera: stages [1, 1, 2, 1]
    assert default_layer_id("sam.image_encoder.trunk.blocks.3.mlp.layers.0.weight", n_layers) == 4
    assert default_layer_id("sam.image_encoder.trunk.pos_embed", n_layers) == 0
    assert default_layer_id("sam.image_encoder.trunk.patch_embed.proj.weight", n_layers) == 0
    heads = [n for n in names if "memory_attention.layers" in n or "transformer.layers" in n]
    assert heads and all(default_layer_id(n, n_layers) == n_layers + 1 for n in heads)
    assert default_layer_id("sam.image_encoder.neck.convs.0.conv.weight", n_layers) == n_layers + 1
    # smp encoders keep their numbering, their decoders train at full LR
    assert default_layer_id("encoder.layer2.0.conv1.weight", 4) == 3
    assert default_layer_id("decoder.blocks.0.conv1.0.weight", 4) == 5
    # per-module learning rates with layer decay on top
    cfg = {"lr": 1.0, "layer_decay": 0.5, "lr_by_module": {"sam.image_encoder": 0.1}}
    by_param = {id(p): g["lr"] for g in build_param_groups(model, cfg) for p in g["params"]}
    p = dict(model.named_parameters())
    assert by_param[id(p["sam.image_encoder.trunk.blocks.4.attn.qkv.weight"])] == pytest.approx(0.1 * 0.5)
    assert by_param[id(p["sam.memory_attention.layers.0.linear1.weight"])] == pytest.approx(1.0)
    assert by_param[id(p["sam.image_encoder.neck.convs.0.conv.weight"])] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="lr_by_module"):
        build_param_groups(model, {"lr": 1.0, "lr_by_module": {"sam.nothing": 0.1}})


def test_per_step_warmup_cosine_schedule():
    from surgseg_core.training.optim import build_optimizer, build_param_groups, build_scheduler

    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(build_param_groups(model, {"lr": 1.0}), {"lr": 1.0})
    cfg = {"scheduler": "cosine", "schedule_unit": "step", "epochs": 2, "warmup_steps": 4, "min_lr_ratio": 0.1}
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    expected = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * k / 16)) for k in range(17)]
    np.testing.assert_allclose(lrs[4:], expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="warm-up"):
        build_scheduler(opt, {**cfg, "warmup_steps": 20}, steps_per_epoch=10)
    with pytest.raises(ConfigError, match="schedule_unit"):
        build_scheduler(opt, {**cfg, "schedule_unit": "batch"}, steps_per_epoch=10)


# -------------------------------------------------------------------- data
def _write_clips(root: Path, seeds, n_frames=10, size=(64, 96)):
    from surgseg_core.synth import write_synthetic_clip

    for s in seeds:
        write_synthetic_clip(root / f"clip{s}", seed=s, n_frames=n_frames, height=size[0], width=size[1])
    return root


def test_dataset_reads_synthetic_clips_and_corrections_exports(tmp_path):
    from surgseg_core.datasets.corrections import export_corrections
    from surgseg_core.methods.sam2.data import VideoClipDataset, collate_clips, find_sequences
    from surgseg_core.synth import generate_endoscopy_clip

    _write_clips(tmp_path / "data", [3], n_frames=8)
    clip = generate_endoscopy_clip(seed=4, n_frames=6, height=64, width=96)
    frames = np.stack([clip.frame(i).image for i in range(6)])
    labels = np.stack([clip.frame(i).instruments for i in range(6)])
    export_corrections(tmp_path / "data" / "export", frames=frames, labels=labels, frame_indices=range(6),
                       provenance={"source_video": "case7.mp4"})
    seqs = find_sequences(tmp_path / "data")
    assert sorted(len(s) for s in seqs) == [6, 8]
    export = next(s for s in seqs if s.name.endswith("case7"))
    assert [p.stem for p in export.masks] == [f"case7_f{i:06d}" for i in range(6)]
    ds = VideoClipDataset(seqs, image_size=64, clip_len=4, max_objects=2, train=True, max_stride=2)
    item = ds[0]
    assert item["images"].shape == (4, 3, 64, 64) and item["masks"].shape[:2][0] == 4
    assert 1 <= item["masks"].shape[1] <= 2
    assert item["masks"][0].flatten(1).sum(1).min() > 0  # every object is on the prompted frame
    batch = collate_clips([ds[0], ds[1]])
    assert batch["images"].shape[0] == 2 and batch["obj_video"].shape[0] == batch["masks"].shape[1]
    ds.set_epoch(1)
    assert len(ds) > 0
    with pytest.raises(DatasetError, match="no video sequences"):
        find_sequences(tmp_path / "data" / "clip3" / "instruments")


def test_validation_clips_can_be_longer_than_training_clips(tmp_path):
    from surgseg_core.methods.sam2.spec import build_datasets

    _write_clips(tmp_path / "train", [3], n_frames=8)
    _write_clips(tmp_path / "val", [4], n_frames=8)
    cfg = {"sam2_config": "surgseg_tiny", "train_root": str(tmp_path / "train"), "val_root": str(tmp_path / "val"),
           "clip_len": 3, "image_size": 64}
    train_ds, val_ds = build_datasets(cfg)
    assert train_ds[0]["images"].shape[0] == 3 and val_ds[0]["images"].shape[0] == 3
    train_ds, val_ds = build_datasets({**cfg, "val_clip_len": 7})
    assert train_ds[0]["images"].shape[0] == 3  # training clips keep clip_len
    item = val_ds[0]
    frames = item["frames"].tolist()  # from the first frame that shows an object: one prompt, 6 tracked
    assert item["images"].shape[0] == 7 and frames == list(range(frames[0], frames[0] + 7))


def test_cpu_budget_stops_after_the_cpu_time_of_its_minutes():
    import time

    from surgseg_core.methods.demo_weights import _CpuBudget
    from surgseg_core.progress import CancelToken

    token = CancelToken()
    budget = _CpuBudget(token, 0.3)
    cpu0, t0 = time.process_time(), time.time()
    budget.start()
    while not token.cancelled and time.time() - t0 < 30:
        sum(range(10000))  # burn CPU
    assert token.cancelled and time.process_time() - cpu0 >= 0.3
    waiting = CancelToken()
    idle = _CpuBudget(waiting, 5.0)
    idle.start()
    time.sleep(0.6)  # sleeping uses no CPU time: the budget does not run out
    idle.cancel()
    idle.join(2)
    assert not waiting.cancelled and not idle.is_alive()


def test_boundary_f_and_jaccard():
    from surgseg_core.methods.sam2.evaluate import boundary_f, jaccard

    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    assert jaccard(gt, gt) == 1.0 and boundary_f(gt, gt) == 1.0
    shifted = np.roll(gt, 1, axis=1)  # within the DAVIS tolerance (ceil(0.008 * 141) = 2 px)
    assert boundary_f(shifted, gt) == 1.0 and jaccard(shifted, gt) < 1.0
    far = np.roll(gt, 10, axis=1)
    assert boundary_f(far, gt) < 0.6
    empty = np.zeros_like(gt)
    assert jaccard(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0 and boundary_f(empty, gt) == 0.0


# ------------------------------------------------------------- feature cache
def test_feature_cache_keys_on_model_frame_and_size(tmp_path):
    from surgseg_core.training.feature_cache import cached_backbone_out, sam2_feature_cache

    sam = _sam().eval()
    frame = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cache = sam2_feature_cache(tmp_path, sam)
    out1 = cached_backbone_out(sam, [frame], cache)
    assert (cache.hits, cache.misses) == (0, 1)
    out2 = cached_backbone_out(sam, [frame], cache)
    assert (cache.hits, cache.misses) == (1, 1)
    with torch.no_grad():
        from surgseg_core.sam2_engine.engine import preprocess_frame

        ref = sam.forward_image(preprocess_frame(frame, 128)[None])
    for a, b, c in zip(out1["backbone_fpn"], out2["backbone_fpn"], ref["backbone_fpn"]):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)
    other = frame.copy()
    other[0, 0, 0] ^= 1
    cached_backbone_out(sam, [other], cache)
    assert cache.misses == 2  # one changed pixel is another frame
    changed = _sam(seed=1)
    assert sam2_feature_cache(tmp_path, changed).path(frame) != cache.path(frame)  # other weights, other key


# ------------------------------------------------------- checkpoints, stages
def _clip_dataset(tmp_path):
    root = tmp_path / "clips"
    if not root.exists():
        _write_clips(root / "train", [11, 12], n_frames=6)
        _write_clips(root / "val", [13], n_frames=6)
    return root


SMALL = {"sam2_config": TINY, "clip_len": 3, "max_objects": 2, "batch_size": 1, "epochs": 1, "device": "cpu",
         "lr": 1e-4, "eval_max_frames": 4, "prob_box": 1.0}


def test_trainable_only_checkpoints_resume_and_refuse_another_base(tmp_path):
    from surgseg_core.training.checkpoint import load_checkpoint, load_model_weights
    from surgseg_core.training.inference import load_trained_model
    from surgseg_core.training.trainer import train

    root = _clip_dataset(tmp_path)
    cfg = {**SMALL, "train_root": str(root / "train"), "freeze": ["image_encoder", "memory_encoder"],
           "checkpoint_trainable_only": True}
    result = train("sam2", cfg, run_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["trainable_only"] is True and ckpt["base_model"]["config"] == TINY
    assert not any(k.startswith(("sam.image_encoder.", "sam.memory_encoder.")) for k in ckpt["model"])
    assert any(k.startswith("sam.memory_attention.") for k in ckpt["model"])
    # resume continues from it; loading it fills the frozen parts from the base model
    again = train("sam2", {"epochs": 2}, run_dir=tmp_path / "run", resume=True)
    assert [r["epoch"] for r in again.history] == [0, 1]
    _, model, _, _ = load_trained_model("sam2", again.last_checkpoint, device="cpu")
    trained = load_checkpoint(again.last_checkpoint)["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    # another base (same architecture, other weights) is refused by hash
    ckpt["base_model"] = {**ckpt["base_model"], "sha256": "0" * 64}
    model.surgseg_base = {**model.surgseg_base, "sha256": "1" * 64}
    with pytest.raises(WeightsError, match="fine-tuned from"):
        load_model_weights(result.last_checkpoint, model, ckpt=ckpt)
    # SAM2's own loader explains why such a file is not a standalone model
    from surgseg_core.sam2_engine import load_state_dict_file

    with pytest.raises(WeightsError, match="only the parameters trained"):
        load_state_dict_file(result.last_checkpoint)


def test_training_stages_start_from_the_previous_best(tmp_path):
    import yaml

    from surgseg_core.training.stages import Stage, train_stages

    root = _clip_dataset(tmp_path)
    base = {**SMALL, "train_root": str(root / "train"), "val_root": str(root / "val")}
    stages = [Stage("heads", {**base, "freeze": ["image_encoder"]}),
              Stage("all", {**base, "freeze": [], "lr": 1e-5}, carry=("sam2_config", "image_size"))]
    out = train_stages("sam2", stages, tmp_path / "run")
    assert out.stopped is None and len(out.results) == 2
    cfg2 = yaml.safe_load((tmp_path / "run" / "all" / "config.yaml").read_text())
    assert cfg2["init_weights"] == str(out.results[0].best_checkpoint)
    assert (tmp_path / "run" / "heads" / "stage_done").is_file()
    with pytest.raises(ConfigError, match="architecture"):
        train_stages("sam2", [stages[0], Stage("all", {**stages[1].config, "sam2_config": "surgseg_demo256"},
                                               carry=("sam2_config",))], tmp_path / "run", resume=True)


def test_exported_training_checkpoint_loads_as_sam2_weights(tmp_path):
    """A full `surgseg train sam2` checkpoint is a SAM2 checkpoint for the
    engine (build_model by path), the demo export gives the same weights."""
    from surgseg_core.methods.sam2.demo import export_safetensors
    from surgseg_core.sam2_engine.build import build_model
    from surgseg_core.training.trainer import train

    root = _clip_dataset(tmp_path)
    result = train("sam2", {**SMALL, "train_root": str(root / "train"), "freeze": []}, run_dir=tmp_path / "run")
    a = build_model(TINY, result.last_checkpoint)
    b = build_model(TINY, export_safetensors(result.last_checkpoint, tmp_path / "w.safetensors"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["memory_attention.layers.0.linear1.weight"],
                           build_model(TINY, seed=0).state_dict()["memory_attention.layers.0.linear1.weight"])


# ------------------------------------------------------------ short training
def test_brief_training_raises_heldout_iou_above_the_random_models():
    """A few dozen steps on clips of moving squares lift the IoU of
    propagated frames on held-out clips (other seeds) well above the random
    model's. (The demo weights' full run is in sample_data/sam2_demo.)"""
    from surgseg_core.methods.sam2.loss import multistep_loss
    from surgseg_core.methods.sam2.model import SAM2ClipModel
    from surgseg_core.methods.sam2.spec import metrics
    from surgseg_core.training.optim import build_optimizer, build_param_groups
    from surgseg_core.training.trainer import set_train_mode

    def square_clip(seed, S=64, T=3):
        g = np.random.default_rng(seed)
        images = torch.from_numpy(g.normal(0, 0.3, (1, T, 3, S, S)).astype(np.float32))
        masks = torch.zeros(T, 1, S, S, dtype=torch.uint8)
        y, x, dy, dx, size = *g.integers(4, 30, 2), *g.integers(-3, 4, 2), int(g.integers(14, 24))
        for t in range(T):
            yy, xx = int(np.clip(y + t * dy, 0, S - size)), int(np.clip(x + t * dx, 0, S - size))
            masks[t, 0, yy:yy + size, xx:xx + size] = 1
            images[0, t, :, yy:yy + size, xx:xx + size] += 1.0
        return {"images": images, "masks": masks, "obj_video": torch.zeros(1, dtype=torch.long)}

    def heldout_iou(model):
        model.eval()
        with torch.no_grad():
            return float(np.mean([metrics(model(square_clip(1000 + s)), square_clip(1000 + s), {})["iou"]
                                  for s in range(6)]))

    torch.manual_seed(0)
    from surgseg_core.sam2_engine.build import build_model

    sam = build_model(TINY, seed=0, image_size=64)
    model = SAM2ClipModel(sam, prob_box=0.7, box_noise=0.05)
    before = heldout_iou(model)
    cfg = {"lr": 1e-3, "weight_decay": 0.0}
    opt = build_optimizer(build_param_groups(model, cfg), cfg)
    for step in range(40):
        set_train_mode(model)
        batch = square_clip(step)
        loss = multistep_loss(model(batch), batch["masks"])["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    after = heldout_iou(model)
    assert after > before + 0.2, (before, after)


def _two_object_sequence(root: Path, n=16, size=32):
    """Object 1 alone on frames 0-5, objects 1 and 2 on frames 6-9, object 2 alone from frame 10."""
    from PIL import Image

    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    for t in range(n):
        mask = np.zeros((size, size), np.uint8)
        if t < 10:
            mask[4:12, 4:12] = 1
        if t >= 6:
            mask[18:28, 16:30] = 2
        Image.fromarray(mask).save(root / "masks" / f"{t:03d}.png")
        frame = np.full((size, size, 3), 60, np.uint8)
        frame[mask > 0] = 200
        Image.fromarray(frame).save(root / "frames" / f"{t:03d}.png")


def test_hard_windows_draw_clips_where_the_prompt_must_tell_objects_apart(tmp_path):
    from surgseg_core.methods.sam2.data import VideoClipDataset, find_sequences

    _two_object_sequence(tmp_path / "seq")
    seqs = find_sequences(tmp_path)
    common = dict(image_size=32, clip_len=3, max_objects=3, train=True, max_stride=1, min_area=4)
    hard = VideoClipDataset(seqs, hard_windows=1.0, **common)
    # first frame with two objects (6-9), or object 1 gone while object 2 is in view (8, 9: frame 10)
    assert hard.hard_starts(0, 1) == [6, 7, 8, 9]
    assert hard.hard_starts(0, 2) == [6, 7, 8, 9]  # start 4 with stride 2 ends on frame 8: both still there
    for i in range(len(hard)):
        item = hard[i]
        assert int(item["frames"][0]) in (6, 7, 8, 9)
        assert item["masks"].shape[1] == 2 or int(item["frames"][0]) in (8, 9)
    # default off: the same items as before the option existed
    plain = VideoClipDataset(seqs, **common)
    off = VideoClipDataset(seqs, hard_windows=0.0, **common)
    assert [plain[i]["frames"].tolist() for i in range(len(plain))] == [off[i]["frames"].tolist()
                                                                         for i in range(len(off))]
    assert any(int(plain[i]["frames"][0]) not in (6, 7, 8, 9) for i in range(len(plain)))
    with pytest.raises(DatasetError, match="hard_windows"):
        VideoClipDataset(seqs, hard_windows=1.5, **common)


def _edge_sequence(root: Path, sides) -> None:
    """A 32x32 sequence whose object 1 comes in from the left edge: 8 rows
    by ``sides[t]`` columns on frame t (2, 3, 5, 8 columns: 16, 24, 40, 64 pixels)."""
    from PIL import Image

    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    for t, side in enumerate(sides):
        mask = np.zeros((32, 32), np.uint8)
        mask[10:18, :side] = 1
        Image.fromarray(mask).save(root / "masks" / f"{t:03d}.png")
        frame = np.full((32, 32, 3), 60, np.uint8)
        frame[mask > 0] = 200
        Image.fromarray(frame).save(root / "frames" / f"{t:03d}.png")


def test_enter_windows_draw_clips_that_start_on_an_object_coming_into_view(tmp_path):
    from surgseg_core.methods.sam2.data import VideoClipDataset, find_sequences

    _edge_sequence(tmp_path / "seq", [0, 0, 0, 2, 3, 5, 8, 8, 8, 8, 8, 8])  # comes in on frames 3-6
    seqs = find_sequences(tmp_path)
    common = dict(image_size=32, clip_len=3, max_objects=3, train=True, max_stride=1, min_area=4)
    ds = VideoClipDataset(seqs, enter_windows=1.0, **common)
    # 3 frames, step 1: frame 3 (16 px) -> frame 5 (40), frame 4 (24) -> frame 6 (64): never 4x larger;
    # step 2: frame 3 (16) -> frame 7 (64): yes, frame 4 (24) -> frame 8 (64): no
    assert ds.enter_starts(0, 1) == []
    assert ds.enter_starts(0, 2) == [3]
    ds2 = VideoClipDataset(seqs, enter_windows=1.0, **{**common, "clip_len": 4})
    assert ds2.enter_starts(0, 1) == [3]  # frames 3-6: 16 -> 64
    for i in range(len(ds2)):
        assert int(ds2[i]["frames"][0]) == 3
    # hard_windows + enter_windows share one draw and may not exceed 1
    with pytest.raises(DatasetError, match="enter_windows"):
        VideoClipDataset(seqs, enter_windows=0.5, hard_windows=0.6, **common)


def test_prompt_following_tells_a_model_that_follows_its_boxes_from_one_that_ignores_them(tmp_path, monkeypatch):
    import torch.nn.functional as F

    from surgseg_core.methods.sam2.data import find_sequences
    from surgseg_core.methods.sam2.evaluate import prompt_following
    from surgseg_core.sam2_engine import heads

    _two_object_sequence(tmp_path / "seq")
    seqs = find_sequences(tmp_path)

    class FakeSam(torch.nn.Module):
        image_size = 64

        def __init__(self, follow):
            super().__init__()
            self.follow = follow

    def encode(sam, images):
        return images

    def decode(sam, feats, *, boxes, **kw):
        bright = (feats[0, 0] > 0).float()  # the objects of this frame (both, as one mask)
        out = torch.full((len(boxes), 1, 64, 64), -1.0)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            if sam.follow:
                out[k, 0, y0:y1, x0:x1] = 1.0
            else:
                out[k, 0] = bright * 2 - 1
        return heads.HeadOutput(masks=out, ious=None, best_masks=F.interpolate(out, size=16), object_score_logits=None,
                                obj_ptr=None)

    monkeypatch.setattr(heads, "encode_frames", encode)
    monkeypatch.setattr(heads, "decode_masks", decode)
    follows = prompt_following(FakeSam(True), seqs)
    ignores = prompt_following(FakeSam(False), seqs)
    assert follows["frames"] == ignores["frames"] == 4 and follows["prompts"] == 8  # frames 6-9, two boxes each
    assert follows["preferred"] == 1.0 and follows["iou_prompted"] > 0.8 and follows["iou_other"] == 0.0
    assert ignores["preferred"] < 1.0
    assert abs(ignores["iou_prompted"] - ignores["iou_other"]) < 0.3 < follows["iou_prompted"] - follows["iou_other"]
    assert prompt_following(FakeSam(True), seqs, max_frames=6)["prompts"] == 0  # one object only before frame 6


def test_single_frame_clips_are_scored_on_their_prompted_frame():
    from surgseg_core.methods.sam2.spec import metrics

    target = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    target[0, 0, :4] = 1
    logits = torch.where(target[0, :, None].bool(), 5.0, -5.0)  # [O, 1, S, S]
    assert metrics([{"pred_masks_high_res": logits}], {"masks": target}, {})["iou"] == 1.0
    assert metrics([{"pred_masks_high_res": -logits}], {"masks": target}, {})["iou"] == 0.0


def test_validation_mean_iou_skips_frames_where_object_and_prediction_are_empty():
    """Two propagated frames, two objects. Object 0: IoU 0.5 on frame 1, gone and not predicted on frame 2
    (empty-empty). Object 1: gone on both, wrongly predicted on frame 2. Hand-computed: "iou" (DAVIS J,
    empty-empty = 1) = (0.5 + 1 + 1 + 0) / 4; "mean_iou" = mean over objects of their non-empty frames
    = (0.5 + 0) / 2."""
    from surgseg_core.methods.sam2.spec import metrics

    target = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
    target[:, 0, 0, :2] = 1
    target[2, 0] = 0
    pred = [torch.full((2, 1, 4, 4), -5.0) for _ in range(3)]
    pred[1][0, 0, 0, :] = 5.0  # 2 of object 0's pixels and 2 more: IoU 2 / 4
    pred[2][1, 0, 3, 3] = 5.0  # object 1 predicted where it is not
    m = metrics([{"pred_masks_high_res": p} for p in pred], {"masks": target}, {})
    assert m["iou"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert m["mean_iou"] == pytest.approx(0.25)


def test_demo_recipe_stages_split_the_budget_and_chain_their_checkpoints(tmp_path, monkeypatch):
    from surgseg_core.methods import demo_weights
    from surgseg_core.methods.sam2 import demo

    calls = []

    processes = []

    def fake_train(method, config, run_dir, *, max_minutes=None, clock="wall", **kw):
        assert clock == "cpu"
        processes.append(kw.get("processes", 1))
        calls.append((dict(config), Path(run_dir), max_minutes))
        best = Path(run_dir) / "best.pt"
        return {"train_seconds": 60.0 * max_minutes, "train_cpu_seconds": 100.0, "epochs_done": 2, "steps": 10,
                "best_checkpoint": str(best), "last_checkpoint": None, "best_metric": 0.5 + len(calls) / 10,
                "config": dict(config)}

    monkeypatch.setattr(demo_weights, "train_with_budget", fake_train)
    monkeypatch.setattr(demo, "write_demo_data", lambda root, **kw: {"train": root / "train", "val": root / "val"})
    stages = [("frames", {"clip_len": 1}, 0.25), ("video", {"lr": 1e-4}, 0.75)]
    summary = demo.train_demo(tmp_path, max_minutes=8, stages=stages, clock="cpu")
    (c1, d1, m1), (c2, d2, m2) = calls
    assert (m1, m2) == (2.0, 6.0) and d2 == tmp_path / "run" and d1 != d2
    assert c1["clip_len"] == 1 and c1["init_weights"] is None and c1["lr"] == demo.DEMO_CONFIG["lr"]
    assert c2["clip_len"] == demo.DEMO_CONFIG["clip_len"] and c2["lr"] == 1e-4
    assert c2["init_weights"] == str(d1 / "best.pt")  # the video stage starts from the first stage's best
    assert summary["steps"] == 20 and summary["train_seconds"] == 480.0 and summary["best_val_iou"] == 0.7
    assert [s["name"] for s in summary["stages"]] == ["frames", "video"]
    assert summary["config"]["clip_len"] == demo.DEMO_CONFIG["clip_len"] and summary["stages"][0]["overrides"] == {
        "clip_len": 1}
    for recipe in demo.RECIPES.values():  # every recipe's stages share the whole budget
        assert not recipe or abs(sum(share for *_, share in recipe) - 1.0) < 1e-9
    calls.clear()
    demo.train_demo(tmp_path / "one", max_minutes=8, stages=(), clock="cpu")
    assert len(calls) == 1 and calls[0][1] == tmp_path / "one" / "run" and calls[0][2] == 8
    # a recipe with its own validation clips writes and records them; none is a training or held-out clip
    written = {}
    monkeypatch.setattr(demo, "write_demo_data",
                        lambda root, **kw: written.update(kw) or {"train": root / "train", "val": root / "val"})
    calls.clear()
    summary = demo.train_demo(tmp_path / "enter", max_minutes=8, stages=demo.RECIPES["staged48-enter"], clock="cpu")
    assert written["val_seeds"] == demo.VAL_SEEDS_8 and summary["val_seeds"] == list(demo.VAL_SEEDS_8)
    assert written["train_seeds"] == demo.TRAIN_SEEDS_48 and summary["recipe"] == "staged48-enter"
    assert not set(demo.VAL_SEEDS_8) & (set(demo.TRAIN_SEEDS_48) | set(demo.HELDOUT_SEEDS))
    assert [c[0].get("monitor") for c in calls] == [None, "val_mean_iou", "val_mean_iou"]
    assert [m for *_, m in calls] == pytest.approx([2.0, 4.8, 1.2])
    assert demo._seed_text(demo.VAL_SEEDS_8) == "500-507" and demo._seed_text(demo.VAL_SEEDS) == "500, 501, 502, 503"
    # the DDP recipe trains each stage in 2 processes (the others in one)
    assert set(processes) == {1}
    calls.clear()
    summary = demo.train_demo(tmp_path / "ddp", max_minutes=8, stages=demo.RECIPES["staged48-ddp"], clock="cpu")
    assert processes[-2:] == [2, 2] and summary["recipe"] == "staged48-ddp"
    assert [c[0]["batch_size"] for c in calls] == [4, 2] and all(c[0]["ddp_find_unused_parameters"] for c in calls)


def test_small_windows_draw_frames_that_show_a_small_object(tmp_path):
    from surgseg_core.methods.sam2.data import VideoClipDataset, find_sequences

    _edge_sequence(tmp_path / "seq", [0, 0, 0, 2, 3, 5, 8, 8, 8, 8])  # object 1: 16, 24, 40, 64 pixels on frames 3-6
    seqs = find_sequences(tmp_path)
    common = dict(image_size=32, clip_len=1, max_objects=3, train=True, max_stride=1, min_area=4)
    ds = VideoClipDataset(seqs, small_windows=1.0, small_area=30, **common)
    assert ds.small_starts(0, 1) == [3, 4]
    assert VideoClipDataset(seqs, small_windows=1.0, small_area=16, **common).small_starts(0, 1) == [3]
    firsts = {int(ds[i]["frames"][0]) for i in range(len(ds))}
    assert firsts == {3, 4} and all(ds[i]["masks"].sum() <= 24 for i in range(len(ds)))
    plain = VideoClipDataset(seqs, **common)  # off: most items show the full-size object
    assert any(int(plain[i]["masks"].sum()) == 64 for i in range(len(plain)))
    with pytest.raises(DatasetError, match="small_windows"):
        VideoClipDataset(seqs, small_windows=0.5, hard_windows=0.6, **common)


def test_evaluation_scores_an_object_one_pixel_wide_on_the_prompted_frame(tmp_path):
    """An instrument coming into view can show a single column of pixels on the
    first frame: its box from the mask (inclusive pixel coordinates, as SAM2's
    training boxes) is a line. The evaluation tracks it instead of refusing
    the clip; an inverted box is still refused."""
    from PIL import Image

    from surgseg_core.datasets import mask_box
    from surgseg_core.methods.sam2.data import find_sequences
    from surgseg_core.methods.sam2.evaluate import evaluate_sam
    from surgseg_core.sam2_engine.heads import parse_prompt

    root = tmp_path / "seq"
    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    for t in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[10:16, 31 - t:32] = 1  # one column on frame 0, growing in from the right edge
        mask[2:8, 2:8] = 2
        Image.fromarray(mask).save(root / "masks" / f"{t:03d}.png")
        frame = np.full((32, 32, 3), 60, np.uint8)
        frame[mask > 0] = 200
        Image.fromarray(frame).save(root / "frames" / f"{t:03d}.png")
    first = np.asarray(Image.open(root / "masks" / "000.png"))
    assert mask_box(first, 1) == (31.0, 10.0, 31.0, 15.0)
    assert mask_box(first, 3) is None
    result = evaluate_sam(_sam(), find_sequences(tmp_path))
    assert result["objects"] == 2 and sorted(result["per_object"]) == ["seq:1", "seq:2"]
    assert all(v["frames"] == 3 for v in result["per_object"].values())
    with pytest.raises(ConfigError, match="x1 >= x0"):
        parse_prompt(box=[31, 10, 30, 15])


def test_flip_and_affine_move_frames_and_masks_together_for_the_whole_clip(tmp_path):
    from surgseg_core.methods.sam2.data import VideoClipDataset, find_sequences

    _edge_sequence(tmp_path / "seq", [8] * 6)  # object 1: rows 10-17, columns 0-7 on every frame
    seqs = find_sequences(tmp_path)
    common = dict(image_size=32, clip_len=3, max_objects=3, train=True, max_stride=1, min_area=4)
    plain = VideoClipDataset(seqs, **common)[0]
    assert plain["masks"][:, 0, 10:18, :8].all()

    flipped = VideoClipDataset(seqs, hflip=1.0, **common)[0]
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))  # the object now at the right edge
    assert torch.equal(flipped["images"], plain["images"].flip(-1))

    turned = VideoClipDataset(seqs, affine_degrees=90.0, affine_shear=20.0, **common)
    moved = [turned[i] for i in range(len(turned))]
    assert any(not torch.equal(m["masks"], plain["masks"]) for m in moved)
    for item in moved:
        masks, images = item["masks"][:, 0].bool(), item["images"]
        assert masks[0].any()  # a draw that would take the object off the prompted frame is not applied
        assert all(torch.equal(masks[t], masks[0]) for t in range(1, 3))  # one draw for the whole clip
        # the frame's object pixels (200 grey: ~1.5 normalised; background ~-0.95, the fill 0) went where its mask went
        bright = images.mean(1) > 0.75
        assert bright[masks].float().mean() > 0.8 and bright[~masks].float().mean() < 0.05
    with pytest.raises(DatasetError, match="hflip"):
        VideoClipDataset(seqs, hflip=1.5, **common)
    with pytest.raises(DatasetError, match="affine"):
        VideoClipDataset(seqs, affine_degrees=-1, **common)
