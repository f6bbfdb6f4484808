"""The bundled demonstration SAM2: the ``surgseg_demo256`` architecture
trained from scratch on synthetic clips, on a CPU, with ``surgseg train sam2``.

``python -m surgseg_core.methods.sam2.demo OUT --max-minutes 20`` writes the
synthetic data, trains (stopping after the time budget with a checkpoint),
exports the best weights as safetensors (SAM2 key names, loadable by
``build_model("surgseg_demo256", path)``) and scores them on held-out clips
(seeds never used in training): one box on the first frame of each object,
propagated by the streaming engine. It is a demonstration model for
synthetic data, not a clinical model.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

log = logging.getLogger(__name__)

DEMO_NAME = "surgseg-demo-sam2"
DEMO_ARCH = "surgseg_demo256"
TRAIN_SEEDS = tuple(range(100, 112))
VAL_SEEDS = (500,)
HELDOUT_SEEDS = (9001, 9002, 9003)
CLIP = dict(n_frames=32, height=240, width=320)
HELDOUT_FRAMES = 25  # a box on frame 0, then 24 propagated frames

DEMO_CONFIG: Dict[str, Any] = {
    "sam2_config": DEMO_ARCH,
    "base_weights": None,
    "freeze": [],
    "clip_len": 4,
    "max_objects": 3,
    "max_stride": 2,
    "prob_box": 0.6,
    "prob_point": 0.1,
    "box_noise": 0.1,
    "correction_points": 0,
    "lr": 5e-4,
    "weight_decay": 0.01,
    "layer_decay": None,
    "batch_size": 1,
    "epochs": 40,
    "scheduler": "cosine",
    "schedule_unit": "step",
    "warmup_steps": 30,
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "checkpoint_trainable_only": False,
    "device": "cpu",
    "seed": 0,
    "num_workers": 0,
    "log_every": 5,
}


def write_demo_data(root: Path, *, progress=None) -> Dict[str, Path]:
    """Synthetic clips for training, validation and the held-out score."""
    from ...synth import write_synthetic_clip

    root = Path(root)
    splits = {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "heldout": HELDOUT_SEEDS}
    for split, seeds in splits.items():
        for seed in seeds:
            folder = root / split / f"clip_{seed}"
            if (folder / "meta.json").is_file():
                continue
            frames = HELDOUT_FRAMES if split == "heldout" else CLIP["n_frames"]
            write_synthetic_clip(folder, seed=seed, n_frames=frames, height=CLIP["height"], width=CLIP["width"])
    return {split: root / split for split in splits}


def export_safetensors(checkpoint: Path, target: Path) -> Path:
    """The SAM2 weights of a ``sam2`` training checkpoint, under SAM2's own
    key names, as safetensors (written atomically)."""
    from safetensors.torch import save_file

    from ...atomic import atomic_path
    from ...training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("trainable_only"):
        raise ValueError(f"{checkpoint} holds only the trained parameters; export needs a full checkpoint")
    state = {k[len("sam."):]: v.contiguous() for k, v in ckpt["model"].items() if k.startswith("sam.")}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"surgseg_config": DEMO_ARCH, "surgseg_method": "sam2"})
    return target


def heldout_scores(weights: Optional[Path], heldout_root: Path, *, seed: int = 0) -> Dict[str, Any]:
    """J&F and mean IoU on the held-out clips (random init when ``weights`` is None)."""
    from ...sam2_engine.build import build_model
    from .data import find_sequences
    from .evaluate import evaluate_sam

    sam = build_model(DEMO_ARCH, str(weights) if weights else None, device="cpu", seed=seed)
    return evaluate_sam(sam, find_sequences(heldout_root), max_frames=HELDOUT_FRAMES)


def train_demo(out: Path, *, max_minutes: float = 20.0, config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from ...progress import CancelToken
    from ...training.trainer import train

    out = Path(out)
    t0 = time.time()
    roots = write_demo_data(out / "data")
    t_data = time.time() - t0
    cfg = {**DEMO_CONFIG, **(config or {}), "train_root": str(roots["train"]), "val_root": str(roots["val"])}
    token = CancelToken()
    timer = threading.Timer(max_minutes * 60.0, token.cancel)
    timer.daemon = True
    cpu0 = time.process_time()
    t1 = time.time()
    timer.start()
    try:
        result = train("sam2", cfg, run_dir=out / "run", cancel=token)
    finally:
        timer.cancel()
    train_s = time.time() - t1
    cpu_s = time.process_time() - cpu0
    summary = {
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(cpu_s, 1),
        "data_seconds": round(t_data, 1),
        "epochs_done": len(result.history),
        "steps": result.history[-1]["step"] if result.history else None,
        "stopped": result.stopped,
        "best_checkpoint": str(result.best_checkpoint),
        "best_val_iou": result.best_metric,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}",
        "config": cfg,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("--export", type=Path, help="write the best weights here (.safetensors) and score them")
    p.add_argument("--only-score", action="store_true", help="skip training; export + score OUT/run's best.pt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.only_score:
        print(json.dumps(train_demo(args.out, max_minutes=args.max_minutes), indent=1, default=str), flush=True)
    if args.export:
        best = args.out / "run" / "checkpoints" / "best.pt"
        export_safetensors(best, args.export)
        t0 = time.time()
        scores = {"trained": heldout_scores(args.export, args.out / "data" / "heldout"),
                  "random_init": heldout_scores(None, args.out / "data" / "heldout")}
        scores["score_seconds"] = round(time.time() - t0, 1)
        (args.out / "heldout_scores.json").write_text(json.dumps(scores, indent=1, default=str))
        print(json.dumps({k: {m: v[m] for m in ("objects", "J", "F", "J&F", "mean_iou")} if isinstance(v, dict) else v
                          for k, v in scores.items()}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
