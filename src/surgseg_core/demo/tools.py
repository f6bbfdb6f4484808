"""Demo step: tool tip and anchor landmarks on the sample clip with the
bundled demo networks (coarse heatmaps -> SAM2 mask prior -> refinement),
written as CSV/JSON (``surgseg predict tools``'s format) and matched with
the generator's annotations within 15 px."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .common import bundled_entry, card_score, missing_weights_lines, sample_clip, score_record

TITLE = "## Tool landmarks"
MARGIN = 0.15  # F1: one synthetic clip differs from the card's three held-out clips


def step_tools(out: Path, summary: dict, scores: dict, *, n_frames: int, device: str, progress=None,
               cancel=None) -> list:
    from ..io import open_video
    from ..methods.tools.data import find_samples
    from ..methods.tools.demo import DEMO_NAME
    from ..methods.tools.evaluate import add_frame_predictions
    from ..methods.tools.matching import LandmarkEvaluator
    from ..methods.tools.predict import load_tools_model, predict_source, write_predictions

    entry = bundled_entry(DEMO_NAME)
    if entry is None:
        return missing_weights_lines(TITLE, DEMO_NAME, summary, "tools")
    folder = sample_clip()
    model, cfg, provider = load_tools_model(DEMO_NAME, device=device, config={"prior_cache": str(out / "tool_priors")})
    timings: Dict[str, float] = {}
    with open_video(folder / "video.mp4") as video:
        n = min(n_frames, len(video))
        results = predict_source(model, video, cfg, stop=n, provider=provider, progress=progress, cancel=cancel,
                                 timings=timings, keep_heatmaps=True)
    heatmaps = {int(r["frame"]): r.pop("heatmaps") for r in results if "heatmaps" in r}
    for r in results:
        r.pop("prior", None)
    files = write_predictions(out, "sample_clip", str(folder / "video.mp4"), results,
                              {"checkpoint": DEMO_NAME, "stage": cfg.get("stage"), "frames": n})
    by_frame = {int(r["frame"]): r for r in results}
    ev = LandmarkEvaluator(tol=float(cfg.get("match_tolerance", 15.0)))
    for s in find_samples(folder):
        if s.frame in by_frame:
            add_frame_predictions(ev, s, by_frame[s.frame])
    overall = {kind: ev.results().get(kind, {}).get("overall", {}) for kind in ("tip", "anchor")}
    tip_f1 = float(overall["tip"].get("f1", float("nan")))
    seconds = sum(timings.values())
    points: List[Dict[str, Any]] = [{"frame": int(r["frame"]), "tip": r["tip"].tolist(), "anchor": r["anchor"].tolist()}
                                    for r in results]
    summary["tools"] = {"weights": DEMO_NAME, "frames": n, "overall": overall, "files": [f.name for f in files],
                        "frames_per_second": n / seconds if seconds else float("nan"),
                        "seconds_by_stage": {k: round(v, 3) for k, v in timings.items()}, "points": points}
    summary["_tool_heatmaps"] = heatmaps  # for the contact sheet; not written to summary.json
    scores["tools"] = score_record(tip_f1, card_score(entry, "heldout_refine_+_prior_+_aux/tip/overall/f1"),
                                   "tip F1 at 15 px (refined, with the SAM2 prior)", MARGIN)
    a = overall["anchor"]
    return [
        TITLE,
        f"Coarse heatmaps from frames t-1..t+1, the bundled demo SAM2 prompted with the decoded tip and anchor "
        f"as the mask prior, then the refinement network: {n} frames at {summary['tools']['frames_per_second']:.1f} "
        f"frames/s on {device}; weights: the bundled demo networks `{DEMO_NAME}` (see "
        f"`sample_data/tools_demo/MODEL_CARD.md`). Landmarks: {', '.join(f'`{f.name}`' for f in files)}. Matched "
        f"one-to-one with the annotated active tool within 15 px: tip precision "
        f"{overall['tip'].get('precision', float('nan')):.2f}, recall {overall['tip'].get('recall', float('nan')):.2f}, "
        f"F1 **{tip_f1:.2f}** (model card, held-out clips: {scores['tools']['heldout']}); anchor F1 "
        f"{a.get('f1', float('nan')):.2f}.",
        "",
    ]
