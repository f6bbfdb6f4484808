"""RP-SAM2 trained on a CPU: the block learns on synthetic instrument frames
with the demo-size SAM2 (random init: no weights can be downloaded; the
bundled demo SAM2 when ``sample_data/sam2_demo`` exists), and the user's
chain ``surgseg train rpsam2`` -> ``surgseg predict rpsam2`` (pseudo masks
from clicks) -> ``surgseg train sam2`` -> ``surgseg evaluate rpsam2`` runs
from the shell."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _rpsam2_helpers import instrument_frames, write_image_mask

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sample_data" / "sam2_demo"


def _distances(model, dataset):
    """Per click (10 seeds per object): distance (normalised) of the click
    and of its refined point to the nearest candidate, and whether the
    refined point is inside its object."""
    from surgseg_core.methods.rpsam2.data import collate

    model.eval()
    with torch.no_grad():
        out = model(collate([dataset[i] for i in range(len(dataset))]))
    size = float(out["image_size"])
    cand, valid = out["candidates"] / size, out["candidate_valid"]

    def nearest(p):
        d = (p[:, None, :] / size - cand).norm(dim=-1)
        return torch.where(valid, d, torch.full_like(d, 9.0)).min(dim=1).values

    from surgseg_core.methods.rpsam2.loss import sample_mask

    inside = sample_mask(out["target"], out["points"]) >= 0.5
    return nearest(out["orig_points"]), nearest(out["points"]), inside


def _train_and_check(tmp_path, sam2_config, base_weights, epochs, weights, closer=True, click_margin=0.0,
                     inside_at_least=0.9, monitor="val_loss"):
    from surgseg_core.methods.rpsam2.spec import build_datasets, build_from_config
    from surgseg_core.training.checkpoint import load_model_weights
    from surgseg_core.training.trainer import train

    root = write_image_mask(tmp_path / "train", instrument_frames(11, 4))
    cfg = {
        "sam2_config": sam2_config, "base_weights": base_weights, "train_root": str(root),
        "val_root": str(root),  # the same frames with fixed clicks: does the block fit them?
        "feature_cache": str(tmp_path / "features"), "epochs": epochs, "batch_size": 4, "lr": 1e-4,
        "loss_weights": weights, "monitor": monitor, "monitor_mode": "min" if monitor == "val_loss" else "max",
        "shift_mlp_dim": 512, "grid_points": 24, "device": "cpu", "seed": 0, "click_margin": click_margin,
    }
    untrained = build_from_config(cfg)
    ds, _ = build_datasets(cfg)
    before, start, _ = _distances(untrained, ds)
    assert torch.equal(before, start)  # an untrained block does not move the clicks
    result = train("rpsam2", cfg, run_dir=tmp_path / "run")
    trained = build_from_config(cfg)
    load_model_weights(result.best_checkpoint, trained)
    _, after, inside = _distances(trained, ds)
    if monitor == "val_loss":
        val = [r["val_loss"] for r in result.history]
        assert min(val) < val[0], val  # the loss on the fixed clicks falls
    else:  # the block's masks from the fixed clicks beat plain SAM2's from the same clicks
        assert max(r["val_dice"] for r in result.history) > result.history[0]["val_dice_plain"], result.history
    # the refined points sit closer to the candidates (the best clicks) than the clicks did, inside the objects
    # (with a SAM2 that already segments from almost any click, the candidates cover the object and the
    # clicks start on them: the demo test checks the Dice spread instead)
    if closer:
        assert after.mean() < 0.85 * before.mean(), (before.mean(), after.mean())
    if inside_at_least is not None:
        assert inside.float().mean() >= inside_at_least
    return trained, ds


def _present_base(tmp_path, config):
    """A random-init SAM2 whose object score says "present": otherwise its
    masks are SAM2's no-object constant and carry no gradient at all."""
    from surgseg_core.sam2_engine import build_model

    base = build_model(config, seed=0)
    with torch.no_grad():
        base.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    return str(tmp_path / "base.pt")


def test_block_learns_on_synthetic_instruments_random_init(tmp_path):
    # A random-init SAM2's masks do not follow the instruments, so its Dice
    # carries no signal: the block learns from L_dist (weight 1 here, the
    # paper's 0.1 balances it against an informative Dice) and L_out, at the
    # paper's lr 1e-4, on 4 frames x 10 clicks per instrument. 45 epochs: on
    # the synthetic generator's version 3 frames 15 moved the refined points
    # only 7 % closer to the candidates (30: 10 %, 45: 22 %).
    _train_and_check(tmp_path, "surgseg_tiny", _present_base(tmp_path, "surgseg_tiny"), epochs=45,
                     weights={"dice": 0.0, "dist": 1.0, "out": 1.0})


def test_block_narrows_the_dice_spread_with_the_bundled_demo_sam2(tmp_path):
    """The bundled demo SAM2 segments these instruments from almost any
    click inside them, so (as the demo recipe does, ``rpsam2/demo.py``) the
    clicks fall within 8 px of each instrument, some on the tissue beside
    it: the block must narrow the spread of Dice across the 10 click seeds
    against plain SAM2 and not lose Dice. Checkpoints are chosen by
    validation Dice, as the demo recipe does: on the demo SAM2 of
    2026-12-04 the paper's compound loss on the fixed clicks rose from the
    first epoch while their Dice rose (0.84 -> 0.89; plain 0.82), and the
    refined clicks that gave the better masks were inside the instrument
    less often (0.375 vs 0.5), so neither the loss nor the inside fraction
    is checked here."""
    if not (DEMO / "weights.json").is_file():
        pytest.skip(f"bundled demo SAM2 not found at {DEMO}: the Dice-spread check needs a SAM2 that segments "
                    "the synthetic instruments (a random-init SAM2's masks carry no signal)")
    from surgseg_core.methods.rpsam2.demo import CLICK_MARGIN

    meta = json.loads((DEMO / "weights.json").read_text())
    trained, _ = _train_and_check(tmp_path, meta.get("config", "surgseg_demo256"), str(DEMO / meta["file"]),
                                  epochs=30, weights=None, closer=False, click_margin=CLICK_MARGIN,
                                  inside_at_least=None, monitor="val_dice")
    from surgseg_core.methods.rpsam2.data import read_samples
    from surgseg_core.methods.rpsam2.evaluate import evaluate_frames

    res = evaluate_frames(trained, read_samples(tmp_path / "train"), click_margin=CLICK_MARGIN)
    assert res["rpsam2"]["all"]["dsc_sd"] < res["sam2"]["all"]["dsc_sd"], res
    assert res["rpsam2"]["all"]["dsc_mean"] >= res["sam2"]["all"]["dsc_mean"] - 1.0, res


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "surgseg_core", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cli_train_predict_pseudo_masks_then_train_sam2_and_evaluate(tmp_path):
    frames = instrument_frames(4, 6)
    data = write_image_mask(tmp_path / "data", frames[:3])
    folder = tmp_path / "clip"
    folder.mkdir()
    from PIL import Image

    for i, (img, _) in enumerate(frames):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    # base SAM2: random-init tiny with its object score forced "present", so clicks give non-empty masks
    common = ["--set", "sam2_config=surgseg_tiny", "--set", f"base_weights={_present_base(tmp_path, 'surgseg_tiny')}", "--set", "shift_mlp_dim=128", "--set", "shift_layers=2",
              "--set", f"feature_cache={tmp_path / 'features'}", "--device", "cpu"]
    _cli("train", "rpsam2", "--run-dir", tmp_path / "run", "--set", f"train_root={data}", "--set", "epochs=1",
         "--set", "grid_points=8", *common, cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert ckpt.is_file()
    # clicks on frames 1 and 4, one per instrument (its mask's first pixel), as a points CSV
    rows = ["frame,x,y,obj_id,positive"]
    for t in (1, 4):
        for k in [k for k in np.unique(frames[t][1]) if k]:
            ys, xs = np.nonzero(frames[t][1] == k)
            rows.append(f"{t},{xs[len(xs) // 2]},{ys[len(ys) // 2]},{k},1")
    (tmp_path / "clicks.csv").write_text("\n".join(rows) + "\n")
    out = _cli("predict", "rpsam2", "--checkpoint", ckpt, folder, "--out", tmp_path / "pseudo",
               "--set", f"points={tmp_path / 'clicks.csv'}", "--device", "cpu", cwd=tmp_path)
    masks = sorted((tmp_path / "pseudo" / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["clip_f00001.png", "clip_f00004.png"] and str(masks[0]) in out
    assert (tmp_path / "pseudo" / "images" / "clip_f00001.png").is_file()
    assert all(np.asarray(Image.open(m)).any() for m in masks)
    log = json.loads((tmp_path / "pseudo" / "refined_points.json").read_text())
    assert set(log) == {"clip_f00001", "clip_f00004"} and "points_after_hook" in log["clip_f00001"][0]
    # the pseudo masks feed SAM2 fine-tuning
    _cli("train", "sam2", "--run-dir", tmp_path / "sam2run", "--set", f"train_root={tmp_path / 'pseudo'}",
         "--set", "sam2_config=surgseg_tiny", "--set", "epochs=1", "--set", "clip_len=2", "--device", "cpu",
         cwd=tmp_path)
    assert (tmp_path / "sam2run" / "checkpoints" / "last.pt").is_file()
    text = _cli("evaluate", "rpsam2", "--checkpoint", ckpt, "--data", data, "--set", "eval_seeds=3",
                "--out", tmp_path / "eval.json", "--device", "cpu", cwd=tmp_path)
    assert "RP-SAM2 mDSC(%)" in text and "Avg." in text
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["objects"] >= 3 and set(res["classes"]) == {"sam2", "rpsam2"}
