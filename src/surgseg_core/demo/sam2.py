"""Demo step: SAM2 tracks the sample clip's instruments from boxes."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..datasets.boxes import mask_box
from .common import _iou, score_record

MARGIN = 0.1  # IoU below the model card's held-out score that still counts as working


def step_sam2(out: Path, summary: dict, scores: dict, *, n_frames: int, device: str, progress=None, cancel=None) -> list:
    """Track the instruments of the sample clip from box prompts on frame 0
    with the streaming engine, writing one PNG label map per frame."""
    from ..io import open_video
    from ..io.export import read_png_masks
    from ..sam2_engine import PngLabelWriter, StreamingSAM2, build_model
    from ..synth.sample import CLIP_DIR, sample_folder
    from ..weights import list_weights

    from ..methods.sam2.demo import DEMO_NAME

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
        from ..sam2_engine import TINY_CONFIG

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
            engine.add_box(0, obj, mask_box(first, obj))
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
    if checkpoint is not None:
        scores["sam2"] = score_record(mean_iou, heldout, "mean IoU of the tracked instruments", MARGIN)
    return [
        "## SAM2 streaming propagation",
        f"Box prompts on frame 0 for instruments {ids}, propagated forward over {len(writer.frames_written)} "
        f"frames ({seconds / max(1, len(writer.frames_written)):.2f} s/frame on {device}); one PNG label map per "
        f"frame in `sam2_masks/` with `provenance.json`. Weights: {weights_note}. "
        f"Memory bank at the end: {mem['memory_bytes'] / 1e6:.1f} MB. Mean IoU against the ground truth: "
        f"{iou_text}.",
        "",
    ]
