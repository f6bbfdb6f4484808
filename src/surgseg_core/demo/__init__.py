"""The offline demo (``surgseg demo``, the README's first command): every
method on the bundled synthetic sample with the bundled demonstration
weights, a Markdown report, a JSON summary, scores against the generator's
ground truth and pictures.

No weights can be downloaded offline, so the demo is honest about what it
runs: SAM2 is the official SAM 2.1 tiny model when its weights are in the
weights cache, else the bundled demonstration SAM2 trained from scratch on
synthetic clips (``sample_data/sam2_demo``); F2PASeg, RP-SAM2 and the tool
landmark networks are the bundled demonstration models trained from it
(``sample_data/*_demo``, each with a model card); the liver landmark model
is a small UNet trained here, on CPU, in a couple of minutes. The numbers
measure the pipeline on synthetic data, not clinical accuracy.

Steps (one module each): ``video``, ``sam2``, ``anatomy`` (F2PASeg),
``clicks`` (RP-SAM2), ``tools`` (tool landmarks), ``liver``; then the
pictures (``sheet``: contact sheet and the all-results overlay video).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import __version__
from ..atomic import atomic_write_text
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from .anatomy import step_anatomy
from .clicks import step_clicks
from .liver import DEMO_LIVER_CONFIG, DEMO_LIVER_TRAIN_SEEDS, DEMO_LIVER_VAL_SEEDS, DEMO_LIVER_WEIGHTS, step_liver
from .sam2 import step_sam2
from .tools import step_tools
from .video import step_video

log = logging.getLogger(__name__)

STEPS = ("video", "sam2", "anatomy", "clicks", "tools", "liver")
CLIP_FRAMES = 24  # frames of the sample clip the methods run on (quick: 6)

__all__ = ["CLIP_FRAMES", "DEMO_LIVER_CONFIG", "DEMO_LIVER_TRAIN_SEEDS", "DEMO_LIVER_VAL_SEEDS", "DEMO_LIVER_WEIGHTS",
           "STEPS", "run_demo"]


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
    from ..sam2_engine import pick_device

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(None if device == "auto" else device))
    steps = list(steps or STEPS)
    n = 6 if quick else CLIP_FRAMES
    summary: dict = {
        "surgseg_version": __version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": dev,
        "quick": quick,
        "seconds": {},
    }
    scores: dict = {}
    lines = [
        "# surgseg demo report",
        "",
        f"surgseg {__version__}, device `{dev}`. All data is synthetic (the bundled sample) and every model is a "
        "demonstration model for synthetic data, not a clinical model; see each step for what the numbers mean.",
        "",
    ]
    common = dict(progress=progress, cancel=cancel)
    runners: Dict[str, Callable[[], list]] = {
        "video": lambda: step_video(out, summary),
        "sam2": lambda: step_sam2(out, summary, scores, n_frames=n, device=dev, **common),
        "anatomy": lambda: step_anatomy(out, summary, scores, n_frames=n, device=dev, **common),
        "clicks": lambda: step_clicks(out, summary, scores, n_frames=n, device=dev, **common),
        "tools": lambda: step_tools(out, summary, scores, n_frames=n, device=dev, **common),
        "liver": lambda: step_liver(out, summary, scores, epochs=1 if quick else DEMO_LIVER_CONFIG["epochs"],
                                    frames_per_scene=2 if quick else 12, device=dev,
                                    checkpoint=liver_checkpoint, **common),
    }
    unknown = [s for s in steps if s not in runners]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown demo step(s) {unknown}; steps: {', '.join(runners)}")

    def save() -> None:  # after every step: a partial report survives a crash
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items()
                                                            if not k.startswith("_")}, indent=2, default=str))
        atomic_write_text(out / "scores.json", json.dumps(scores, indent=2, default=str))

    for i, name in enumerate(steps):
        check_cancel(cancel)
        report(progress, i, len(steps) + 1, name)
        log.info("demo step: %s", name)
        t0 = time.perf_counter()
        lines += runners[name]()
        summary["seconds"][name] = round(time.perf_counter() - t0, 1)
        save()
    report(progress, len(steps), len(steps) + 1, "pictures")
    lines += _pictures(out, summary, n, **common)
    save()
    report(progress, len(steps) + 1, len(steps) + 1, "done")
    return out / "report.md"


def _pictures(out: Path, summary: dict, n: int, progress=None, cancel=None) -> list:
    from .sheet import contact_sheet, overlay_all

    t0 = time.perf_counter()
    sheet = contact_sheet(out, summary, n, summary.pop("_liver_sheet", None))
    video = overlay_all(out, summary, n, cancel=cancel)
    summary["seconds"]["pictures"] = round(time.perf_counter() - t0, 1)
    summary["pictures"] = {"contact_sheet": sheet.name if sheet else None,
                           "overlay": video.name if video else None}
    lines = ["## Pictures"]
    if sheet:
        lines.append(f"`{sheet.name}`: each method's result beside the ground truth on frames 0, {n // 2} and "
                     f"{n - 1} of the sample clip (and the liver sample).")
    if video:
        lines.append(f"`{video.name}`: the sample-clip results tiled 2 x 2, {n} frames.")
    return lines + [""]


def summary_lines(summary: dict, scores: dict) -> List[str]:
    """One line per method: its score beside the model card's, and its time."""
    out = []
    for name, sec in summary.get("seconds", {}).items():
        s = scores.get(name)
        if s:
            held = f" (model card {s['heldout']:.3f})" if s.get("heldout") is not None else ""
            out.append(f"{name:<8} {s['what']}: {s['score']:.3f}{held}  [{sec:.0f} s]")
        else:
            out.append(f"{name:<8} [{sec:.0f} s]")
    return out
