"""The bundled demonstration tool-landmark model: coarse multi-frame
heatmap network, then the refinement network with the SAM2 mask prior (the
bundled demo SAM2, ``surgseg-demo-sam2``) and the auxiliary mask branch,
trained with ``surgseg train tools`` (its stages) on synthetic clips, on a
CPU.

``python -m surgseg_core.methods.tools.demo OUT --max-minutes 10 --export
sample_data/tools_demo/surgseg-demo-tools.safetensors`` writes the clips
(video + ``tool_annotations.csv``), trains both stages, exports the
refinement checkpoint (it holds the coarse network too) and scores the
coarse and refined rows on held-out clips: tip and anchor precision,
recall, F1 and L2 with one-to-one matching within 15 px.

Demo sizes (the method's defaults are larger): a ResNet18 encoder cut at
depth 3 with a small decoder, no ImageNet weights (nothing can be
downloaded offline), 80 x 64 input, frames t-1..t+1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

DEMO_NAME = "surgseg-demo-tools"
PRIOR_NAME = "surgseg-demo-sam2"
TRAIN_SEEDS = tuple(range(700, 712))
HELDOUT_SEEDS = (9301, 9302, 9303)
CLIP = dict(n_frames=32, height=240, width=320)

DEMO_CONFIG: Dict[str, Any] = {
    "k": 1,
    # 1/4 of the 320 x 240 clips: at 160 x 128 (tried 2026-12-02) the heatmaps stayed flat for tips
    # (held-out tip F1 0.0 after 12 epochs); the test recipe's scale (1/2 of 128 x 96 clips) learns
    "input_width": 80,
    "input_height": 64,
    "encoder": "resnet18",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
    "sigma": 2.5,
    "threshold": 0.1,
    "prior_sam2_config": "surgseg_demo256",
    "prior_sam2_weights": PRIOR_NAME,
    "refine_variants": ["prior_aux"],
    # 16 epochs per stage (2026-12-03) left the refined anchors at F1 0.30 on the second demo SAM2's prior;
    # 24 (about 6 of the 15 minutes): tip 0.90, anchor 0.82 refined, 0.85 / 0.91 coarse. On the staged48-enter15
    # demo SAM2 (2026-12-04) 24 left the refined anchors at 0.55; 32 (655 of the 900 CPU-s): refined 0.89 / 0.93,
    # coarse 0.90 / 0.95; 40 (807 CPU-s, too near the budget for a slower CPU): refined 0.89 / 0.95
    "epochs": 32,
    "batch_size": 8,
    "lr": 3e-3,
    "device": "cpu",
    "seed": 0,
    "num_workers": 0,
}


def write_clips(root: Path, seeds: Sequence[int]) -> Path:
    """Synthetic clips with their ``tool_annotations.csv`` (the method's format)."""
    from ...synth import write_synthetic_clip

    root = Path(root)
    for s in seeds:
        folder = root / f"clip_{s}"
        if not (folder / "meta.json").is_file():
            write_synthetic_clip(folder, seed=s, n_frames=CLIP["n_frames"], height=CLIP["height"], width=CLIP["width"])
    return root


def train_demo(out: Path, max_minutes: Optional[float], *, clock: str = "cpu") -> Dict[str, Any]:
    from ..demo_weights import train_with_budget

    out = Path(out)
    cfg = {**DEMO_CONFIG, "train_root": str(write_clips(out / "data" / "train", TRAIN_SEEDS)),
           "prior_cache": str(out / "priors")}
    write_clips(out / "data" / "heldout", HELDOUT_SEEDS)
    return train_with_budget("tools", cfg, out / "run", max_minutes=max_minutes, clock=clock)


def _refine_checkpoint(out: Path) -> Path:
    stage = Path(out) / "run" / "refine_prior_aux" / "checkpoints"
    return stage / "best.pt" if (stage / "best.pt").is_file() else stage / "last.pt"


def export_demo(out: Path, target: Path) -> Path:
    from ..demo_weights import export_checkpoint

    return export_checkpoint(_refine_checkpoint(out), target)


def score_demo(out: Path, weights: Path) -> Dict[str, Any]:
    from ...training.inference import evaluate_checkpoint

    return evaluate_checkpoint("tools", weights, Path(out) / "data" / "heldout",
                               {"device": "cpu", "prior_cache": str(Path(out) / "priors")})


def write_card(folder: Path, weights: Path, summary: Mapping[str, Any], scores: Mapping[str, Any],
               command: str, notes: str = "") -> str:
    from ..demo_weights import NOT_CLINICAL, hardware_line, write_weights_json

    meta = write_weights_json(folder, name=DEMO_NAME, weights=weights, method="tools", metrics=_card_metrics(scores))
    cfg = summary["config"]
    card = f"""# {DEMO_NAME}: demonstration tool tip / anchor landmark networks for synthetic clips

{NOT_CLINICAL} Real use trains on your own annotated videos (`surgseg train tools --set train_root=YOUR_CLIPS`,
the annotation format is in the README) with the official SAM 2.1 weights as the mask prior
(`--set prior_sam2_config=sam2.1_hiera_tiny --set prior_sam2_weights=sam2.1_hiera_tiny`).

- Models: the coarse network (frames t-{cfg['k']}..t+{cfg['k']} -> tip and anchor heatmaps) and the refinement network
  (frame, coarse heatmaps and the SAM2 mask prior -> refined heatmaps, with the auxiliary mask branch), both
  segmentation_models_pytorch U-Nets with a ResNet18 encoder cut at depth {cfg['encoder_depth']}, decoder
  {cfg['decoder_channels']}, random init (no ImageNet weights offline), input {cfg['input_width']}x{cfg['input_height']}.
  The mask prior comes from the bundled demo SAM2 `{PRIOR_NAME}` prompted with the decoded tip and anchor.
- Weights: `{weights.name}` (safetensors, {weights.stat().st_size / 1e6:.1f} MB, sha256 `{meta['sha256']}`): the refinement
  stage's checkpoint, which holds the coarse network too; registered as `{DEMO_NAME}` (method `tools`).
- Training data: synthetic clips (`surgseg_core.synth`, `tool_annotations.csv`: only the active tool is labelled),
  seeds {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]} ({len(TRAIN_SEEDS)} clips x {CLIP['n_frames']} frames, {CLIP['width']}x{CLIP['height']}).
- Recipe: `surgseg train tools` (stages {', '.join(summary.get('stages') or [])}): Gaussian targets sigma
  {cfg['sigma']} heatmap px, {cfg['epochs']} epochs per stage, batch {cfg['batch_size']}, lr {cfg['lr']} cosine, seed
  {cfg['seed']}; decoding threshold {cfg['threshold']}.
- Command (exact): `{command}`
- Time and hardware: {hardware_line(summary)}

{_heldout_section(scores)}{notes}"""
    return card


def _card_metrics(scores: Mapping[str, Any]) -> Dict[str, Any]:
    keep = {k: round(float(v), 4) for k, v in scores.items() if "/overall/" in k}
    return {**{f"heldout_{k.replace(' ', '_')}": v for k, v in keep.items()},
            "heldout_frames": int(scores["frames"]), "heldout_seeds": list(HELDOUT_SEEDS)}


def _heldout_section(scores: Mapping[str, Any]) -> str:
    """The card's "## Held-out scores" section."""
    return f"""## Held-out scores

{int(scores['frames'])} frames of synthetic clips never used in training (seeds {', '.join(map(str, HELDOUT_SEEDS))});
one-to-one (Hungarian) matching of predicted and true landmarks of the same type within 15 px
({scores.get('score_seconds', 0):.0f} s):

```text
{scores['table']}
```
"""


def rescore_demo(out: Path, weights: Path) -> Tuple[Dict[str, Any], str]:
    """``demo_main``'s ``--rescore``: the held-out clips under ``out``, then the card's metrics and section."""
    import time

    write_clips(Path(out) / "data" / "heldout", HELDOUT_SEEDS)
    t0 = time.time()
    scores = score_demo(out, weights)
    scores["score_seconds"] = round(time.time() - t0, 1)
    return _card_metrics(scores), _heldout_section(scores)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..demo_weights import demo_main

    return demo_main(argv, doc=__doc__, train=train_demo, export=export_demo, score=score_demo,
                     write_card=write_card, export_name=f"{DEMO_NAME}.safetensors", rescore=rescore_demo)


if __name__ == "__main__":
    raise SystemExit(main())
