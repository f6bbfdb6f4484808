"""A small liver model trained ONCE per test session on the synthetic liver
scene (shared by the training, evaluation and widget tests).

Unet + ResNet18 encoder (depth 3, small decoder), random init, 160 x 128
input, 4 liver seeds x 12 frames for training, 2 other seeds for
checkpoint selection, and 2 further seeds held out for the Dice test.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

H, W = 128, 160
TRAIN_SEEDS, VAL_SEEDS, TEST_SEEDS = (0, 1, 2, 3), (10, 11), (20, 21)

SMALL_MODEL = {
    "arch": "unet", "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3,
    "decoder_channels": [32, 16, 8], "input_width": W, "input_height": H,
}
TRAIN_CONFIG = {
    **SMALL_MODEL, "lr": 3e-3, "batch_size": 8, "epochs": 24, "scheduler": "cosine",
    "early_stopping_patience": 0, "loss_alpha": 1.0, "loss_beta": 1.0, "device": "cpu", "seed": 0,
    "line_thickness": 3, "eval_thickness": 3, "d_max": 10,
}


def write_split(root: Path, seeds, n_frames: int) -> Path:
    """images/ + masks/ of several synthetic liver scenes (generic layout)."""
    from surgseg_core.synth import write_liver_training_folder

    return write_liver_training_folder(root, seeds, n_frames, height=H, width=W)


@functools.lru_cache(maxsize=None)
def synthetic_liver_splits() -> dict:
    import atexit
    import shutil

    root = Path(tempfile.mkdtemp(prefix="surgseg-liver-"))
    atexit.register(shutil.rmtree, root, True)
    return {
        "root": root,
        "train": write_split(root / "train", TRAIN_SEEDS, 12),
        "val": write_split(root / "val", VAL_SEEDS, 6),
        "test": write_split(root / "test", TEST_SEEDS, 6),
    }


@functools.lru_cache(maxsize=None)
def trained_liver_model():
    """(TrainResult, config, seconds) of the session's small liver model."""
    import time

    from surgseg_core.training.trainer import train

    splits = synthetic_liver_splits()
    cfg = {**TRAIN_CONFIG, "train_root": str(splits["train"]), "val_root": str(splits["val"])}
    t0, c0 = time.perf_counter(), time.process_time()
    result = train("liver", cfg, run_dir=splits["root"] / "run")
    print(f"liver test model: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    return result, cfg, time.perf_counter() - t0


def held_out_dice(checkpoint, folder) -> dict:
    """Per-class mean pixel Dice (images without the class excluded) of the
    raw prediction on a folder, via the method's own predictor."""
    from surgseg_core.methods.liver import CLASS_NAMES, LANDMARK_CLASSES
    from surgseg_core.methods.liver.data import find_samples
    from surgseg_core.methods.liver.metrics import dice
    from surgseg_core.methods.liver.predict import LiverPredictor
    from surgseg_core.methods.liver.readers import read_image, read_index_mask

    pred = LiverPredictor.from_checkpoint(checkpoint, device="cpu")
    per_class = {CLASS_NAMES[c]: [] for c in LANDMARK_CLASSES}
    for s in find_samples(folder, "generic"):
        lab = pred.predict([read_image(s.image)], postprocess_on=False)[0].raw_full
        gt = read_index_mask(s.label)
        for c in LANDMARK_CLASSES:
            d = dice(lab == c, gt == c)
            if d == d:
                per_class[CLASS_NAMES[c]].append(d)
    out = {k: float(np.mean(v)) for k, v in per_class.items() if v}
    out["mean"] = float(np.mean(list(out.values())))
    return out
