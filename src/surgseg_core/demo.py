"""The offline demo: every finished part of the pipeline on the bundled
synthetic sample, with a Markdown report, a JSON summary and pictures.

No weights can be downloaded offline, so the demo is honest about what it
runs: SAM2 is the official SAM 2.1 tiny model when its weights are in the
weights cache, else the bundled demonstration SAM2 trained from scratch on
synthetic clips (``sample_data/sam2_demo``), else random weights (said so,
with no IoU reported as a result); the liver landmark model is a
small UNet trained here, on CPU, on synthetic liver scenes for a couple of
minutes. Its numbers measure the pipeline on synthetic data, not clinical
accuracy.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import __version__
from .atomic import atomic_path, atomic_write_text
from .progress import CancelToken, ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)

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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def step_video(out: Path, summary: dict) -> list:
    """Open the sample clip lazily, check random access, export a GT overlay."""
    from .io import open_video
    from .io.export import export_overlay_video, read_png_masks
    from .synth.sample import CLIP_DIR, sample_folder

    folder = sample_folder(CLIP_DIR)
    t0 = time.perf_counter()
    with open_video(folder / "video.mp4") as video:
        first = video[0]
        t_first = time.perf_counter() - t0
        meta = video.metadata
        seq = [f for _, f in video.iter_frames(0, 10)]
        random_ok = all(np.array_equal(video[i], seq[i]) for i in (7, 3, 9, 0))
        instruments = read_png_masks(folder / "instruments")
        overlay = out / "sample_clip_ground_truth_overlay.mp4"
        export_overlay_video(video, overlay, labels=instruments)
    summary["video"] = {
        "path": str(folder / "video.mp4"),
        "frames": meta.n_frames,
        "size": [meta.width, meta.height],
        "fps": meta.fps,
        "codec": meta.codec,
        "time_to_first_frame_s": round(t_first, 4),
        "random_equals_sequential": bool(random_ok),
        "overlay": overlay.name,
    }
    assert first.shape == (meta.height, meta.width, 3)
    return [
        "## 1. Video I/O",
        f"Opened `{folder.name}/video.mp4` lazily: {meta.n_frames} frames, {meta.width}x{meta.height}, "
        f"{meta.fps:g} fps, codec {meta.codec}; first frame in {t_first * 1000:.0f} ms; random access equals "
        f"sequential decoding: **{random_ok}**. Ground-truth instrument overlay: `{overlay.name}`.",
        "",
    ]


def step_sam2(out: Path, summary: dict, *, n_frames: int, device: str, progress=None, cancel=None) -> list:
    """Track the instruments of the sample clip from box prompts on frame 0
    with the streaming engine, writing one PNG label map per frame."""
    from .io import open_video
    from .io.export import read_png_masks
    from .sam2_engine import PngLabelWriter, StreamingSAM2, build_model
    from .synth.sample import CLIP_DIR, sample_folder
    from .weights import list_weights

    from .methods.sam2.demo import DEMO_NAME

    folder = sample_folder(CLIP_DIR)
    installed = {w.name: w for w in list_weights(method="sam2") if w.present}
    heldout = None
    if "sam2.1_hiera_tiny" in installed:
        checkpoint = "sam2.1_hiera_tiny"
        model = build_model("sam2.1_hiera_tiny", checkpoint=checkpoint, device=device, image_size=512)
        weights_note = "official SAM 2.1 tiny weights from the weights cache"
    elif DEMO_NAME in installed:
        entry = installed[DEMO_NAME]
        checkpoint = DEMO_NAME
        model = build_model(entry.config, checkpoint=checkpoint, device=device)
        heldout = entry.metrics.get("heldout_mean_iou")
        weights_note = (f"the bundled demonstration SAM2 `{DEMO_NAME}` ({entry.config}, trained from scratch on "
                        "synthetic clips on a CPU; a demonstration model for synthetic data, not a clinical model: "
                        "real use starts from the official SAM 2.1 weights; see `sample_data/sam2_demo/MODEL_CARD.md`)"
                        + (f"; its mean IoU on held-out synthetic clips (seeds never used in training, one box on "
                           f"the first frame, {entry.metrics.get('heldout_frames', 24)} propagated frames) is "
                           f"**{heldout:.3f}**" if heldout is not None else ""))
    else:
        from .sam2_engine import TINY_CONFIG

        checkpoint = None
        model = build_model(TINY_CONFIG, device=device, seed=0)
        weights_note = ("**random weights** (the tiny test configuration; no SAM2 checkpoint in the weights "
                        "cache, and none can be downloaded offline): masks are not meaningful, the step shows "
                        "that the streaming engine runs end to end in bounded memory")
    truth = read_png_masks(folder / "instruments")
    with open_video(folder / "video.mp4", stop=n_frames) as video:
        engine = StreamingSAM2(model, video)
        first = np.asarray(truth[0])
        ids = [int(i) for i in np.unique(first) if i]
        for obj in ids:
            ys, xs = np.nonzero(first == obj)
            engine.add_box(0, obj, [xs.min(), ys.min(), xs.max(), ys.max()])
        writer = PngLabelWriter(out / "sam2_masks", overwrite=True)  # the demo's own folder, rerun at will
        t0 = time.perf_counter()
        engine.propagate(writer, direction="forward", progress=progress, cancel=cancel)
        seconds = time.perf_counter() - t0
        writer.write_provenance(engine.provenance())
        mem = engine.memory_report()
    ious = []
    for t in writer.frames_written:
        from PIL import Image

        pred = np.asarray(Image.open(writer.path_for(t)))
        gt = np.asarray(truth[t])
        ious += [_iou(pred == k, gt == k) for k in ids]
    mean_iou = float(np.nanmean(ious)) if ious else float("nan")
    if checkpoint is None:
        iou_text = ("not a result: with random weights the masks are meaningless (the number, "
                    f"{mean_iou:.3f}, only shows the comparison runs)")
    else:
        iou_text = f"**{mean_iou:.3f}** on this sample clip (instruments {ids}, {len(writer.frames_written)} frames)"
    summary["sam2"] = {
        "weights": checkpoint or "random-init surgseg_tiny",
        "heldout_mean_iou": heldout,
        "objects": ids,
        "frames": len(writer.frames_written),
        "seconds_per_frame": round(seconds / max(1, len(writer.frames_written)), 4),
        "memory_bank_bytes_at_end": mem["memory_bytes"],
        "mean_iou_vs_ground_truth": mean_iou,
    }
    return [
        "## 2. SAM2 streaming propagation",
        f"Box prompts on frame 0 for instruments {ids}, propagated forward over {len(writer.frames_written)} "
        f"frames ({seconds / max(1, len(writer.frames_written)):.2f} s/frame on {device}); one PNG label map per "
        f"frame in `sam2_masks/` with `provenance.json`. Weights: {weights_note}. "
        f"Memory bank at the end: {mem['memory_bytes'] / 1e6:.1f} MB. Mean IoU against the ground truth: "
        f"{iou_text}.",
        "",
    ]


def step_liver(out: Path, summary: dict, *, epochs: int, frames_per_scene: int, device: str,
               checkpoint: Optional[str] = None, progress=None, cancel=None) -> list:
    """Train (or load) a liver landmark model on synthetic scenes and evaluate
    it on the bundled liver sample with the paper's P / D / G table."""
    from .methods.liver.evaluate import evaluate_method
    from .methods.liver.predict import LiverPredictor
    from .synth.sample import LIVER_DIR, sample_folder
    from .synth.writer import write_liver_training_folder
    from .training.inference import load_trained_model
    from .training.trainer import train

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
        from .weights import register_checkpoint

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
    pp_ms, kernels = _postprocess_timing(predictor, sample)
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
        "## 3. Liver landmarks",
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

    from .methods.liver import _fast
    from .methods.liver.data import resize_image
    from .methods.liver.postprocess import postprocess

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


def run_demo(
    out_dir,
    *,
    quick: bool = False,
    device: str = "auto",
    steps: Optional[List[str]] = None,
    liver_checkpoint: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Run the demo steps into ``out_dir``; returns the report path.

    ``quick`` shortens training and tracking (used by the tests).
    """
    from .sam2_engine import pick_device

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(None if device == "auto" else device))
    steps = steps or ["video", "sam2", "liver"]
    summary: dict = {
        "surgseg_version": __version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": dev,
        "quick": quick,
    }
    lines = [
        "# surgseg demo report",
        "",
        f"surgseg {__version__}, device `{dev}`. All data is synthetic (the bundled sample); see each step "
        "for what the numbers mean.",
        "",
    ]
    runners: Dict[str, Callable[[], list]] = {
        "video": lambda: step_video(out, summary),
        "sam2": lambda: step_sam2(out, summary, n_frames=6 if quick else 24, device=dev,
                                  progress=progress, cancel=cancel),
        "liver": lambda: step_liver(out, summary, epochs=1 if quick else DEMO_LIVER_CONFIG["epochs"],
                                    frames_per_scene=2 if quick else 12, device=dev,
                                    checkpoint=liver_checkpoint, progress=progress, cancel=cancel),
    }
    for i, name in enumerate(steps):
        check_cancel(cancel)
        if name not in runners:
            from .errors import ConfigError

            raise ConfigError(f"unknown demo step {name!r}; steps: {', '.join(runners)}")
        report(progress, i, len(steps), name)
        log.info("demo step: %s", name)
        lines += runners[name]()
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")  # partial report survives a crash
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    report(progress, len(steps), len(steps), "done")
    return out / "report.md"
