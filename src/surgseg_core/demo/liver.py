"""Demo step: liver landmarks (a small UNet trained here, or a given checkpoint)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..atomic import atomic_path
from .common import score_record

# Liver model trained by the demo: a shallow UNet (ResNet18 encoder cut at
# depth 3, small decoder) learns the synthetic scene on 2 CPU cores in a few
# minutes; the paper's ResNet34 UNet at 416 x 320 is the method's default.
DEMO_LIVER_CONFIG: Dict[str, Any] = {
    "arch": "unet",
    "encoder": "resnet18",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
    "input_width": 208,
    "input_height": 160,
    "line_thickness": 6.0,  # the synthetic scene's curve width at 416 x 320
    "eval_thickness": 6.0,
    "loss_alpha": 1.0,
    "loss_beta": 1.0,
    "batch_size": 8,
    "lr": 3e-3,
    "scheduler": "cosine",
    "epochs": 16,
    "early_stopping_patience": 0,
    "device": "auto",
    "seed": 0,
    "num_workers": 0,
}
#: Name under which the liver model the demo trains is registered (offered by
#: the liver widget's "Registered" list like a model trained from the Train widget).
DEMO_LIVER_WEIGHTS = "surgseg-demo-liver"
DEMO_LIVER_TRAIN_SEEDS = tuple(range(101, 107))
DEMO_LIVER_VAL_SEEDS = (201, 202)



def step_liver(out: Path, summary: dict, scores: dict, *, epochs: int, frames_per_scene: int, device: str,
               checkpoint: Optional[str] = None, progress=None, cancel=None) -> list:
    """Train (or load) a liver landmark model on synthetic scenes and evaluate
    it on the bundled liver sample with the paper's P / D / G table."""
    from ..methods.liver.evaluate import evaluate_method
    from ..methods.liver.predict import LiverPredictor
    from ..synth.sample import LIVER_DIR, sample_folder
    from ..synth.writer import write_liver_training_folder
    from ..training.inference import load_trained_model
    from ..training.trainer import train

    sample = sample_folder(LIVER_DIR)
    config = dict(DEMO_LIVER_CONFIG, epochs=epochs, device=device)
    t0 = time.perf_counter()
    registered = None
    if checkpoint is None:
        data = out / "liver_data"
        train_root = write_liver_training_folder(data / "train", DEMO_LIVER_TRAIN_SEEDS, frames_per_scene)
        val_root = write_liver_training_folder(data / "val", DEMO_LIVER_VAL_SEEDS, max(4, frames_per_scene // 2))
        config.update(train_root=str(train_root), val_root=str(val_root))
        result = train("liver", config, run_dir=out / "liver_run", progress=progress, cancel=cancel)
        checkpoint = str(result.best_checkpoint)
        from ..weights import register_checkpoint

        # a later demo run re-registers the name with its own model
        register_checkpoint(checkpoint, name=DEMO_LIVER_WEIGHTS, method="liver",
                            metrics={"best_val_dice": float(result.best_metric)})
        registered = DEMO_LIVER_WEIGHTS
        n_train = len(DEMO_LIVER_TRAIN_SEEDS) * frames_per_scene
        trained_note = (f"trained here for {len(result.history)} epochs on {n_train} synthetic frames of "
                        f"{len(DEMO_LIVER_TRAIN_SEEDS)} scenes, best validation dice {result.best_metric:.3f}, "
                        f"registered as `{DEMO_LIVER_WEIGHTS}` (the liver widget's \"Registered\" list)")
    else:
        trained_note = f"loaded from `{checkpoint}`"
    train_s = time.perf_counter() - t0
    _, model, cfg, _dev = load_trained_model("liver", checkpoint, None, device)
    cfg = dict(cfg, checkpoint=checkpoint)
    metrics = evaluate_method(model, sample, cfg)
    table = metrics.pop("table")
    predictor = LiverPredictor(model, cfg, checkpoint=checkpoint)
    figure = _liver_figure(predictor, sample, out / "liver_prediction.png")
    summary["_liver_sheet"] = _liver_pictures(predictor, sample)
    pp_ms, kernels = _postprocess_timing(predictor, sample)
    scores["liver"] = score_record(float(metrics.get("post/mean/dice", float("nan"))), None,
                                   "mean Dice of the landmark curves after post-processing (trained here)", 0.0)
    summary["liver"] = {
        "checkpoint": checkpoint,
        "registered_as": registered,
        "train_seconds": round(train_s, 1),
        "metrics": metrics,
        "figure": figure.name,
        "postprocess_ms_per_frame": round(pp_ms, 2),
        "postprocess_kernels": kernels,
    }
    return [
        "## Liver landmarks",
        f"UNet (shallow ResNet18 encoder, random init, {cfg['input_width']}x{cfg['input_height']}) {trained_note}; "
        f"{train_s:.0f} s. Evaluated on the bundled liver sample (`{sample.name}`, held-out seed) in the "
        "paper's table layout; with one training stage, the 'fine-tuning' row is this model's raw output and "
        "'post-processing' the same model after the curve post-processing:",
        "",
        "```",
        table,
        "```",
        "",
        f"Prediction after post-processing (curves) on the first sample frame: `{figure.name}`.",
        f"The curve post-processing took {pp_ms:.1f} ms per frame here (median over the sample, "
        f"{kernels} kernels; `benchmarks/liver_postprocess.py` measures it properly).",
        "",
    ]


def _postprocess_timing(predictor, sample: Path):
    """Median ms per frame of the post-processing alone on the sample frames,
    and which kernels ran ("compiled" or "numpy": the extension was not built)."""
    from PIL import Image

    from ..methods.liver import _fast
    from ..methods.liver.data import resize_image
    from ..methods.liver.postprocess import postprocess

    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((sample / "images").iterdir())]
    times = []
    for image, lab in zip(images, predictor.label_maps(images)):
        small = resize_image(image, predictor.size)
        t0 = time.perf_counter()
        postprocess(lab, small, out_shape=image.shape[:2], options=predictor.options)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)) if times else float("nan"), "compiled" if _fast.kernels is not None else "numpy"


def _liver_figure(predictor, sample: Path, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    image = np.asarray(Image.open(sorted((sample / "images").iterdir())[0]).convert("RGB"))
    pred = predictor.predict([image], postprocess_on=True)[0]
    colors = {1: "yellow", 2: "red", 3: "deepskyblue"}
    fig, ax = plt.subplots(figsize=(6, 4.6), dpi=100)
    ax.imshow(image)
    for cls, lines in (pred.result.polylines if pred.result is not None else {}).items():
        for line in lines:
            line = np.asarray(line)
            if len(line) > 1:
                ax.plot(line[:, 0], line[:, 1], color=colors.get(int(cls), "white"), lw=2)
    ax.set_title("predicted landmarks: silhouette (yellow), ridge (red), ligament (blue)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


LIVER_COLOURS = {1: (255, 255, 0), 2: (255, 0, 0), 3: (0, 191, 255)}  # silhouette, ridge, ligament


def _liver_pictures(predictor, sample: Path):
    """(result, truth) pictures of the sample's first frame for the contact
    sheet: predicted curves drawn on it; the ground-truth masks blended in."""
    from PIL import Image
    from skimage.draw import line

    from ..io.overlay import paint_frame

    first = sorted((sample / "images").iterdir())[0]
    image = np.asarray(Image.open(first).convert("RGB"))
    pred = predictor.predict([image], postprocess_on=True)[0]
    drawn = image.copy()
    h, w = image.shape[:2]
    for cls, lines in (pred.result.polylines if pred.result is not None else {}).items():
        for poly in lines:
            poly = np.asarray(poly, float)
            for (x0, y0), (x1, y1) in zip(poly[:-1], poly[1:]):
                for d in (-1, 0, 1):  # 3 px wide
                    rr, cc = line(int(round(y0)) + d, int(round(x0)), int(round(y1)) + d, int(round(x1)))
                    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                    drawn[rr[ok], cc[ok]] = LIVER_COLOURS.get(int(cls), (255, 255, 255))
    truth_path = sample / "masks" / first.with_suffix(".png").name
    truth = np.asarray(Image.open(truth_path)) if truth_path.is_file() else None
    return drawn, paint_frame(image, truth, colors=LIVER_COLOURS, alpha=0.7)
