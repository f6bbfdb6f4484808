"""Demo step: F2PASeg segments the sample clip's pituitary anatomy from a
box per visible class on key frames (every 10 frames), with the bundled
demo F2PASeg; scored per class against the generator's ground truth the
way its model card was (``f2paseg.evaluate.evaluate_clips``)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from .common import bundled_entry, card_score, demo_provenance, missing_weights_lines, sample_clip, score_record

TITLE = "## Anatomy (F2PASeg)"
MARGIN = 0.15  # Dice: one synthetic clip differs from the card's three held-out clips


def step_anatomy(out: Path, summary: dict, scores: dict, *, n_frames: int, device: str, progress=None,
                 cancel=None) -> list:
    from ..io.labels_io import write_labels_tiff
    from ..methods.f2paseg.classes import PAS
    from ..methods.f2paseg.data import read_generic
    from ..methods.f2paseg.demo import DEMO_NAME
    from ..methods.f2paseg.evaluate import evaluate_clips
    from ..sam2_engine.track import load_tracking_model

    entry = bundled_entry(DEMO_NAME)
    if entry is None:
        return missing_weights_lines(TITLE, DEMO_NAME, summary, "anatomy")
    folder = sample_clip()
    clip = read_generic(folder / "video.mp4", folder / "anatomy", PAS)[0]
    n = min(n_frames, len(clip))
    stack = np.zeros((n, *clip.size), np.uint8)

    def keep(_name: str, t: int, labels: np.ndarray) -> None:
        if t < n:
            stack[t] = labels

    model = load_tracking_model(DEMO_NAME, device=device)
    res = evaluate_clips(model, [clip], PAS, box_every=10, max_frames=n, keep_recent_prompt_frames=2,
                         progress=progress, cancel=cancel, on_labels=keep)
    tiff = write_labels_tiff(stack, out / "anatomy_labels.tif", provenance=demo_provenance(
        entry, folder / "video.mp4", range(n), method="f2paseg", key_frames=list(range(0, n, 10))))
    per_class: Dict[str, float] = {k: round(v["dice"], 3) for k, v in res["classes"].items() if v["frames"]}
    summary["anatomy"] = {"weights": DEMO_NAME, "frames": res["frames"], "mean_dice": res["mean_dice"],
                          "mean_iou": res["mean_iou"], "class_dice": per_class, "fps": res["fps"],
                          "labels": tiff.name, "key_frames": list(range(0, n, 10))}
    scores["anatomy"] = score_record(res["mean_dice"], card_score(entry, "heldout_mean_dice"),
                                     "mean Dice over the anatomy classes", MARGIN)
    cells = ", ".join(f"{k} {v:.2f}" for k, v in per_class.items())
    return [
        TITLE,
        f"A box per visible class (from the ground truth) on frames {', '.join(map(str, range(0, n, 10)))}, then "
        f"the streaming engine with prompt partitioning over {res['frames']} frames ({res['fps']:.1f} frames/s on "
        f"{device}); weights: the bundled demo F2PASeg `{DEMO_NAME}` (demonstration model for synthetic data, "
        "see `sample_data/f2paseg_demo/MODEL_CARD.md`). Label stack: "
        f"`{tiff.name}`. Dice per class: {cells}; mean Dice **{res['mean_dice']:.3f}** (model card, held-out "
        f"clips: {scores['anatomy']['heldout']:.3f}).",
        "",
    ]
