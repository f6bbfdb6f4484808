"""F2PASeg training and evaluation (``surgseg train/evaluate f2paseg``): the
paper's setup as defaults through the real optimiser code, base weights
that are absent, the training prompts and prompt partitioning in the clip
forward, the class-per-object dataset, and a short fine-tuning run on
synthetic anatomy clips (PAS layout) that lowers the loss and lifts
held-out Dice above the plain model's, evaluated through the CLI (Table 2
markdown + JSON). Random-init tiny SAM2 models and the bundled demo SAM2, CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from surgseg_core.errors import ConfigError, WeightsError

TINY = {"sam2_config": "surgseg_tiny", "base_weights": None, "image_size": 128}
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "sample_data" / "sam2_demo"


def _write_pas(root: Path, splits, *, n_frames: int, size=(96, 128)) -> Path:
    """Synthetic anatomy clips (every 2nd lacks the rare IP and OCR) in the PAS layout."""
    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_clip
    from surgseg_core.methods.f2paseg.classes import PAS
    from surgseg_core.methods.f2paseg.data import write_pas

    for split, seeds in splits.items():
        clips = [synthetic_anatomy_clip(s, n_frames, *size, absent_classes=() if s % 2 == 0 else PAS.rare_ids)[0]
                 for s in seeds]
        write_pas(clips, root, split)
    return root


# ------------------------------------------------------------ configuration
def test_papers_setup_reaches_the_optimiser():
    """Defaults (only the model size changed): AdamW (0.9, 0.999), lr 5e-6,
    image encoder 3e-6 with layer decay 0.9, weight decay 0.1 but none on
    biases/norms, cosine to lr/10 per step, decoder frozen but the fusion
    module; 10-frame clips, 6 objects, a box every 10 frames."""
    from surgseg_core.methods.sam2.loss import WEIGHTS
    from surgseg_core.training.method import get_method
    from surgseg_core.training.optim import build_optimizer, build_param_groups, build_scheduler
    from surgseg_core.training.trainer import resolve_config

    spec = get_method("f2paseg")
    cfg = resolve_config(spec, TINY)
    assert (cfg["clip_len"], cfg["max_objects"], cfg["box_every"], cfg["epochs"]) == (10, 6, 10, 40)
    assert cfg["loss_weights"] is None and WEIGHTS == {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0,
                                                       "loss_class": 1.0}
    model = spec.build_model(cfg)
    groups = build_param_groups(model, cfg, None, layer_id=spec.layer_id)
    opt = build_optimizer(groups, cfg)
    assert opt.defaults["betas"] == (0.9, 0.999) and isinstance(opt, torch.optim.AdamW)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert all(n.startswith("sam.sam_mask_decoder.fusion.") for n in trainable if n.startswith("sam.sam_mask_decoder."))
    assert any(n.startswith("sam.sam_mask_decoder.fusion.") for n in trainable)
    assert {n.split(".")[1] for n in trainable} >= {"image_encoder", "memory_attention", "memory_encoder",
                                                    "sam_prompt_encoder", "obj_ptr_proj"}
    n_layers = 5  # surgseg_tiny's Hiera blocks
    last_block = "sam.image_encoder.trunk.blocks.4.attn.qkv.weight"
    assert lr_of[id(named[last_block])] == (pytest.approx(3e-6 * 0.9), 0.1)
    assert lr_of[id(named["sam.image_encoder.trunk.patch_embed.proj.weight"])][0] == pytest.approx(
        3e-6 * 0.9 ** (n_layers + 1))
    assert lr_of[id(named["sam.memory_attention.layers.0.linear1.weight"])] == (pytest.approx(5e-6), 0.1)
    assert lr_of[id(named["sam.sam_mask_decoder.fusion.s8.f.weight"])] == (pytest.approx(5e-6), 0.1)
    assert lr_of[id(named["sam.sam_mask_decoder.fusion.s8.f.bias"])][1] == 0.0  # no decay on biases
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    for _ in range(40 * 3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["initial_lr"])
    assert model.keep_recent_prompt_frames == 2
    with pytest.raises(ConfigError, match="unknown f2paseg config key.*did you mean"):
        spec.build_model({**cfg, "box_evry": 5})


def test_absent_base_weights_fail_with_a_clear_message(tmp_path, monkeypatch):
    from surgseg_core.training.method import get_method
    from surgseg_core.training.trainer import resolve_config

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path))  # an empty weights cache
    spec = get_method("f2paseg")
    cfg = resolve_config(spec, {"image_size": 128})  # the default base: SAM 2.1 tiny
    with pytest.raises(WeightsError, match=r"sam2.1_hiera_tiny.*not in the weights cache.*base_weights=null"):
        spec.build_model(cfg)


# ------------------------------------------------- prompts and partitioning
def test_training_prompts_every_10_frames_and_partitioned_memory(monkeypatch):
    """Boxes on frames 0, 10, 20 (a prompt frame where an object is hidden
    is skipped), jittered in training only; from frame 21 on the memory
    attention sees the prompts 10 and 20, not 0 (engine's rule)."""
    from surgseg_core.methods.f2paseg.train import F2PASegClipModel
    from surgseg_core.methods.f2paseg.spec import build_from_config
    from surgseg_core.methods.sam2 import clip as clip_mod

    torch.manual_seed(0)
    S, T = 64, 24
    sam = build_from_config({**TINY, "image_size": S})
    model = F2PASegClipModel(sam, box_every=10, box_jitter=0.2, keep_recent_prompt_frames=2)
    masks = torch.zeros(T, 2, S, S, dtype=torch.uint8)
    masks[:, 0, 10:30, 10:30] = 1
    masks[:, 1, 35:60, 30:55] = 1
    assert model.prompt_frames(masks) == [0, 10, 20]
    hidden = masks.clone()
    hidden[10, 1] = 0
    assert model.prompt_frames(hidden) == [0, 20]
    model.eval()
    exact = model.sample_prompts(masks)
    assert exact[0]["point_coords"][0].tolist() == [[10.0, 10.0], [29.0, 29.0]]
    model.train()
    jittered = model.sample_prompts(masks)
    assert not torch.equal(jittered[10]["point_coords"], exact[10]["point_coords"])
    assert (jittered[10]["point_coords"] - exact[10]["point_coords"]).abs().max() <= 0.2 * 25 + 1e-4

    seen = {}
    real = clip_mod.select_memory

    def spy(cond, non_cond, frame_idx, reverse, **kw):
        c, nc = real(cond, non_cond, frame_idx, reverse, **kw)
        seen[frame_idx] = sorted(c)
        return c, nc

    monkeypatch.setattr(clip_mod, "select_memory", spy)
    images = torch.randn(1, T, 3, S, S)
    model.eval()
    with torch.no_grad():
        outs = model({"images": images, "masks": masks, "obj_video": torch.zeros(2, dtype=torch.long)})
    assert len(outs) == T
    assert seen[5] == [0] and seen[15] == [0, 10] and seen[21] == [10, 20] and seen[23] == [10, 20]
    model.keep_recent_prompt_frames = None  # off: SAM2's own selection sees every prompt
    with torch.no_grad():
        model({"images": images, "masks": masks, "obj_video": torch.zeros(2, dtype=torch.long)})
    assert seen[21] == [0, 10, 20]


# -------------------------------------------------------------------- data
def test_dataset_objects_are_the_classes_of_the_first_frame(tmp_path):
    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_clip
    from surgseg_core.methods.f2paseg.classes import IGNORE, PAS
    from surgseg_core.methods.f2paseg.data import AnnotatedClip
    from surgseg_core.methods.f2paseg.train import AnnotatedClipDataset, annotated_runs, collate

    clip, _ = synthetic_anatomy_clip(2, 12, 96, 128)
    # a sparse copy with unlabelled pixels: frames 0-4 and 7-11 annotated
    sparse = AnnotatedClip("sparse", 12, clip.frame, {i: None for i in range(12) if i not in (5, 6)}, PAS,
                           clip.size, read_mask=lambda i: np.where(np.arange(128)[None, :] < 8, IGNORE,
                                                                   clip.mask(i)).astype(np.uint8))
    assert [(r.start, len(r)) for r in annotated_runs(sparse)] == [(0, 5), (7, 5)]
    ds = AnnotatedClipDataset([clip, sparse], PAS, image_size=64, clip_len=4, max_objects=3, train=True)
    for idx in range(len(ds)):
        item = ds[idx]
        ids = item["object_ids"].tolist()
        assert 1 <= len(ids) <= 3 and set(ids) <= set(PAS.ids)  # IGNORE is no object
        assert item["masks"].shape == (4, len(ids), 64, 64)
        assert bool(item["masks"][0].flatten(1).any(1).all())  # every object is on the prompted frame
    batch = collate([ds[0], ds[1]])
    assert batch["object_ids"].shape[0] == batch["masks"].shape[1] == batch["obj_video"].shape[0]


def test_instrument_overlay_in_training_data(tmp_path, caplog):
    """augment_instruments: clips with IP/OCR get an overlaid copy from the
    instrument clips (generic layout, any non-zero mask value = instrument);
    the class distribution before/after is logged (the paper's Fig. 4)."""
    import logging

    from PIL import Image

    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_clip
    from surgseg_core.methods.f2paseg.train import build_datasets

    root = _write_pas(tmp_path / "pas", {"train": [0, 1, 2]}, n_frames=6)  # seed 1 lacks IP and OCR
    _, donor = synthetic_anatomy_clip(7, 6, 96, 128)
    inst = tmp_path / "instruments"
    (inst / "frames").mkdir(parents=True), (inst / "masks").mkdir()
    for i in range(6):
        rgb, mask = donor[i]
        Image.fromarray(rgb).save(inst / "frames" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 2).save(inst / "masks" / f"{i:03d}.png")
    cfg = {**TINY, "train_root": str(root), "clip_len": 4, "max_objects": 6, "box_every": 10, "max_stride": 1,
           "seed": 0, "hidden_label": 0, "class_set": "pas", "dataset_format": "pas", "train_split": "train",
           "val_split": "val"}
    plain, val = build_datasets(cfg)
    assert val is None
    with caplog.at_level(logging.INFO, logger="surgseg_core.methods.f2paseg.train"):
        augmented, _ = build_datasets({**cfg, "augment_instruments": True, "instrument_root": str(inst)})
    from surgseg_core.methods.f2paseg.augment import contains_classes
    from surgseg_core.methods.f2paseg.data import read_pas

    rare = sum(contains_classes(c, (3, 5)) for c in read_pas(root, "train"))
    assert rare >= 1 and len(augmented.sequences) == len(plain.sequences) + rare
    assert f"instrument overlay: {rare} augmented clips" in caplog.text and "frames before" in caplog.text
    with pytest.raises(ConfigError, match="instrument_root"):
        build_datasets({**cfg, "augment_instruments": True})


# -------------------------------------------------- fine-tuning + evaluation
def _finetune_and_evaluate(tmp_path, base: dict):
    from surgseg_core.cli.main import main
    from surgseg_core.training.trainer import train

    # one thread: SAM2's many small ops gain nothing from two, and a busy
    # shared machine makes two threads wait on each other at every op
    torch.set_num_threads(1)
    root = _write_pas(tmp_path / "pas", {"train": [0, 1, 2], "val": [10], "test": [20, 21]}, n_frames=8)
    cfg = {"train_root": str(root), "clip_len": 3, "max_objects": 3, "epochs": 2, "batch_size": 1,
           "device": "cpu", "log_every": 1, "seed": 0, **base}
    result = train("f2paseg", cfg, run_dir=tmp_path / "run")
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r.get("type") == "step"]
    out = tmp_path / "table2.json"
    code = main(["evaluate", "f2paseg", "--checkpoint", str(result.best_checkpoint), "--data", str(root),
                 "--out", str(out)])
    assert code == 0
    scores = json.loads(out.read_text())
    md = out.with_suffix(".md").read_text()
    return losses, scores, md


def _check_table(scores, md, plain="SAM2 (random-init surgseg_tiny)"):
    from surgseg_core.methods.f2paseg.classes import PAS

    for row in ("sam2", "f2paseg"):
        r = scores[row]
        assert set(r["classes"]) == {c.abbrev for c in PAS.classes}
        assert r["frames"] == 16 and r["fps"] > 0 and r["device"].startswith("cpu (")
        assert 0 <= r["mean_dice"] <= 1 and 0 <= r["mean_iou"] <= r["mean_dice"] + 1e-9
    assert "| Model | mIoU | Dice Mean | SF | TS | IP | CR | OCR | OP | FPS |" in md
    assert "F2PASeg (best.pt)" in md and plain in md


def test_finetuning_random_init_lowers_loss_and_beats_the_plain_model(tmp_path):
    """Random-init tiny SAM2 as F2PASeg (decoder trainable too: a random
    frozen decoder is no SAM2), 36 steps on synthetic anatomy at 64 px: the
    loss falls and held-out Dice rises above the plain model's (which
    predicts nothing: a random object-score head says "absent"). 36 steps
    teach little (mean Dice ~0.05); the demo-weights test below is the one
    that measures fine-tuning a working SAM2."""
    losses, scores, md = _finetune_and_evaluate(
        tmp_path, {**TINY, "image_size": 64, "freeze_mask_decoder": False, "lr": 2e-3, "lr_by_module": None,
                   "grad_clip": 1.0, "weight_decay": 0.0, "layer_decay": None, "min_lr_ratio": 1.0,
                   "box_jitter": 0.0})
    first, last = np.mean(losses[1:6]), np.mean(losses[-5:])  # step 1 of a random init: ~1000, not a baseline
    assert last < 0.7 * first, (first, last)
    _check_table(scores, md)
    assert scores["f2paseg"]["mean_dice"] > scores["sam2"]["mean_dice"], md


def test_finetuning_the_demo_sam2_as_f2paseg(tmp_path):
    """The bundled demo SAM2 (trained on synthetic instrument clips)
    fine-tuned the paper's way (mask decoder frozen but the fusion module)
    on synthetic anatomy: the loss falls and held-out Dice rises above the
    plain demo SAM2's (which segments no anatomy from boxes: Dice 0).

    The paper's freezing and loss; the optimiser as the demo F2PASeg's
    (``methods/f2paseg/demo.py``: warm-up, no layer decay, gradient clip 1)
    at twice its lr, for 180 steps (10 epochs of 18 clips); held-out Dice
    ~0.1 (seeds 0, 1, 2: 0.111, 0.094, 0.097). The first steps' loss (a few
    hundred) is the frames where the object-score head says "absent": SAM2
    sets those masks to -1024, so their focal term is 20 * 0.25 * 1024 *
    (object area) / objects, a constant without gradient (only the
    object-score BCE moves it); once the scores say "present" the masks
    learn. The settings of this test until 2026-12-03 (lr 1e-4, image
    encoder 5e-5, the paper's layer decay 0.9 and clip 0.1, no warm-up):
    36 steps lower the loss (217 -> 11) but leave held-out Dice at 0.0;
    180 steps reach 0.059."""
    weights = sorted(DEMO_WEIGHTS.glob("*.safetensors")) if DEMO_WEIGHTS.is_dir() else []
    if not weights:
        pytest.skip(f"no demo SAM2 weights in {DEMO_WEIGHTS} (sample_data/sam2_demo is not committed yet)")
    losses, scores, md = _finetune_and_evaluate(
        tmp_path, {"sam2_config": "surgseg_demo256", "base_weights": str(weights[0]), "image_size": 256,
                   "freeze_mask_decoder": True, "epochs": 10, "lr": 2e-4, "lr_by_module": {"sam.image_encoder": 1e-4},
                   "layer_decay": None, "grad_clip": 1.0, "warmup_steps": 10})
    assert len(losses) == 180
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    _check_table(scores, md, plain=f"SAM2 ({weights[0]})")
    assert scores["f2paseg"]["mean_dice"] > scores["sam2"]["mean_dice"], md
