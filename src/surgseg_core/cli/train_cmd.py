"""``surgseg train | evaluate | predict``: the shared trainer from the shell.

All three accept ``--config cfg.yaml`` and repeated ``--set key=value``
overrides; all run unchanged under ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from ..config import load_config, merge_config, parse_overrides
from ..progress import CancelToken, TextProgress
from ..training.distributed import env_world

TRAIN_EXAMPLES = """examples:
  surgseg train liver --config liver.yaml --run-dir runs/liver1
  surgseg train liver --config liver.yaml --set lr=1e-4 --set epochs=3 --run-dir runs/liver2
  surgseg train liver --run-dir runs/liver1 --resume          # continue after a crash / Ctrl-C
  surgseg train liver --config l3d.yaml --fine-tune-set train_root=data/p2ilf --run-dir runs/liver
    (the paper's two stages: RUN_DIR/stage1 on l3d.yaml's data, then RUN_DIR/stage2 fine-tuned
     from stage 1's best checkpoint with lr 1e-4, batch 8, 0.75 wCE + 0.25 Focal-Tversky)
  torchrun --nproc_per_node 2 -m surgseg_core train liver --config liver.yaml --run-dir runs/ddp
  surgseg train sam2 --set train_root=clips/train --set val_root=clips/val \
      --set base_weights=sam2.1_hiera_tiny --run-dir runs/sam2
    (fine-tune SAM 2.1 through its video memory on clips with per-frame object masks: synthetic
     clips, videos or frames/ next to masks/, or "Corrections -> dataset" exports; image encoder
     frozen, SAM2's loss and prompts; checkpoints hold the trained parameters only)
  surgseg train rpsam2 --set train_root=cataract1k/train --set val_root=cataract1k/val \
      --set base_weights=sam2.1_hiera_large --run-dir runs/rp
    (RP-SAM2's shift block on a frozen SAM2: 10 random clicks per object, Dice + L_dist + L_out;
     frames with instrument masks: images/+masks/, Supervisely (Cataract-1K), COCO or EndoVis)
  surgseg train f2paseg --set train_root=data/PAS --run-dir runs/f2paseg
    (the paper's setup: SAM 2.1 tiny + fusion module at 1024 px, 10-frame clips, a box per class
     every 10 frames, mask decoder frozen but the fusion module, 40 epochs; PAS layout
     train/ and val/ splits; --set base_weights=null for a random-init model)
  surgseg train tools --set train_root=clips/train --set val_root=clips/val --run-dir runs/tools
    (tool tip/anchor landmarks: RUN_DIR/coarse, then RUN_DIR/refine_prior_aux from the coarse stage's
     best checkpoint with SAM2 mask priors precomputed once per frame; --set refine_variants=[none,prior,prior_aux]
     --set direct=true trains all rows of the paper's ablation; --set stage=coarse trains one stage)
  surgseg train mypkg.methods:mymethod --set data_root=data/train --run-dir runs/mine

Trainer keys (YAML or --set): epochs batch_size lr weight_decay layer_decay
scheduler(cosine|plateau|none) min_lr min_lr_ratio plateau_factor plateau_patience
early_stopping_patience grad_clip grad_accum device(auto|cpu|cuda|mps)
precision(auto|bf16|fp32) seed num_workers monitor monitor_mode log_every
init_weights schedule_unit(epoch|step) warmup_steps warmup_epochs lr_by_module
checkpoint_trainable_only; method keys (data_root, val_root, ...) sit beside them.
Ctrl-C stops after the current step and saves checkpoints/last.pt; a second
Ctrl-C aborts. The run folder holds config.yaml, metrics.jsonl and checkpoints/.
"""

EVAL_EXAMPLES = """examples:
  surgseg evaluate liver --checkpoint runs/liver1/checkpoints/best.pt --data data/liver/test
  surgseg evaluate liver --checkpoint best.pt --data data/test --out metrics.json --device cpu
  surgseg evaluate liver --checkpoint runs/liver/stage2/checkpoints/best.pt --data data/test \\
      --set stage1_checkpoint=runs/liver/stage1/checkpoints/best.pt
    (all three rows of the paper's table: initial training, fine-tuning, post-processing)
  surgseg evaluate tools --checkpoint runs/tools/refine_prior_aux/checkpoints/best.pt --data clips/test \\
      --set compare_checkpoints=[runs/tools/refine_none/checkpoints/best.pt,runs/tools/direct/checkpoints/best.pt]
    (P/R/F1/L2 at 15 px per action and overall, rows side by side as the paper's Tables 2-3)
  surgseg evaluate sam2 --checkpoint runs/sam2/checkpoints/best.pt --data clips/test
    (J&F, J, F and mean IoU per object from one box on each object's first frame, plain base
     model and fine-tuned side by side)
  surgseg evaluate rpsam2 --checkpoint runs/rp/checkpoints/best.pt --data cataract1k/test
    (the RP-SAM2 paper's Table 1: 10 random single clicks per object, mDSC and mHD95 mean +- sd
     across the clicks per class, plain SAM2 and RP-SAM2 side by side)
  surgseg evaluate f2paseg --checkpoint runs/f2paseg/checkpoints/best.pt --data data/PAS --out pas_test.json
    (the PAS test split: Dice per class, mDice, mIoU and FPS as the paper's Table 2, plain SAM2 and
     F2PASeg on the same boxes; pas_test.md holds the table)
"""

PREDICT_EXAMPLES = """examples:
  surgseg predict liver --checkpoint runs/liver1/checkpoints/best.pt clip1.mp4 clip2.mp4 --out preds/
  surgseg predict liver --checkpoint best.pt frames_folder/ --out preds/ --set size=[512,288]
  surgseg predict tools --checkpoint runs/tools/refine_prior_aux/checkpoints/best.pt clip.mp4 --out preds/
    (clip_tool_landmarks.csv / .json: video, frame, type (tip/anchor), x, y, score)
  torchrun --nproc_per_node 4 -m surgseg_core predict liver --checkpoint best.pt videos/*.mp4 --out preds/
    (each process takes a share of the inputs)
  surgseg predict rpsam2 --checkpoint runs/rp/checkpoints/best.pt frames/ --out pseudo/ --set points=clicks.csv
    (masks of the clicked frames, clicks CSV frame,x,y[,obj_id][,positive], refined by RP-SAM2;
     pseudo/ feeds surgseg train sam2 --set train_root=pseudo/)
"""


def _common(p: argparse.ArgumentParser, methods: str) -> None:
    p.add_argument("method", help=f"method name ({methods}) or package.module:name")
    p.add_argument("--config", type=Path, help="YAML config file (flat key: value mapping)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; value typed as YAML (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="compute device (default: config or auto)")


def _user_config(args) -> dict:
    cfg = merge_config(load_config(args.config), parse_overrides(args.overrides))
    if args.device:
        cfg["device"] = args.device
    return cfg


def register(subparsers) -> None:
    from ..training.method import available_methods

    methods = ", ".join(available_methods())
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train a method (one loop for all methods; DDP with torchrun)",
                              description=f"Train a method. Available methods: {methods}.",
                              epilog=TRAIN_EXAMPLES, formatter_class=fmt)
    _common(p, methods)
    p.add_argument("--run-dir", type=Path, required=True, help="run folder (logs, config.yaml, checkpoints/)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    p.add_argument("--fine-tune-config", type=Path, metavar="YAML",
                   help="methods with a two-stage recipe (liver): then fine-tune (stage 2) with this config on top of "
                        "its fine-tuning defaults")
    p.add_argument("--fine-tune-set", dest="fine_tune_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a stage-2 config key of a two-stage method (repeatable; e.g. train_root=data/p2ilf)")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("evaluate", help="metrics of a checkpoint on a dataset folder",
                              description="Evaluate a trained checkpoint on a dataset folder.",
                              epilog=EVAL_EXAMPLES, formatter_class=fmt)
    _common(p, methods)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.pt) written by 'surgseg train'")
    p.add_argument("--data", type=Path, required=True, help="dataset folder to evaluate on")
    p.add_argument("--out", type=Path, help="also write the metrics to this JSON file (and a method's table next to "
                   "it as .md); the JSON is written last: a .md without it is an unfinished run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --out JSON (and .md table) of an earlier evaluation (default: refuse)")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("predict", help="run a checkpoint on videos or frame folders",
                              description="Predict with a trained checkpoint; writes files into --out.",
                              epilog=PREDICT_EXAMPLES, formatter_class=fmt)
    _common(p, methods)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.pt) written by 'surgseg train'")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="video files or frame folders")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; surgseg_predict.json (one per process under torchrun: "
                        "surgseg_predict.rank<R>of<N>.json) is written last and lists the files of the run")
    p.add_argument("--overwrite", action="store_true",
                   help="predict into a folder that holds an earlier prediction run (default: refuse)")
    p.set_defaults(func=run_predict)


def _install_sigint(token: CancelToken):
    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print("\nsurgseg: stopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread
        return None


def _has_two_stage(name: str) -> bool:
    from ..training.method import get_method

    try:
        return get_method(name).train_two_stage is not None
    except Exception:  # a method that cannot load here has none to offer
        return False


def run_train(args) -> int:
    from ..training.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main_rank = env_world().is_main
    two_stage = bool(args.fine_tune_config or args.fine_tune_overrides)
    if two_stage:
        from ..errors import ConfigError
        from ..training.method import available_methods, get_method

        spec = get_method(args.method)
        if spec.train_two_stage is None:
            with_it = [m for m in available_methods() if _has_two_stage(m)]
            raise ConfigError(f"--fine-tune-config / --fine-tune-set: method {spec.name!r} has no two-stage "
                              f"training (methods with one: {', '.join(with_it) or 'none'})")
    token = CancelToken()
    previous = _install_sigint(token)
    try:
        progress = TextProgress("train") if main_rank else None
        if two_stage:
            train_two_stage = spec.train_two_stage
            stage2 = merge_config(load_config(args.fine_tune_config), parse_overrides(args.fine_tune_overrides))
            if args.device:
                stage2.setdefault("device", args.device)
            first, result = train_two_stage(_user_config(args), stage2, args.run_dir, resume=args.resume,
                                            progress=progress, cancel=token)
            if result is None:  # cancelled in stage 1
                result = first
            elif main_rank:
                print(f"stage 1 best checkpoint: {first.best_checkpoint}")
                if "stage1_checkpoint" in spec.default_config:  # its evaluation compares the stages
                    print(f"evaluate all three table rows: surgseg evaluate {spec.name} --checkpoint "
                          f"{result.best_checkpoint} --set stage1_checkpoint={first.best_checkpoint} --data TEST_DATA")
        else:
            from ..training.method import get_method

            spec = get_method(args.method)
            user = _user_config(args)
            recipe = spec.stages(user, args.run_dir) if spec.stages is not None else None
            if recipe:  # the method's stages (tools: coarse, then refinement)
                from ..training.stages import train_stages

                out = train_stages(args.method, recipe, args.run_dir, resume=args.resume, progress=progress,
                                   cancel=token)
                result = out.results[-1]
                if main_rank:
                    for stage, res in zip(recipe, out.results):
                        print(f"stage {stage.name}: best checkpoint {res.best_checkpoint}")
            else:
                result = train(args.method, user, run_dir=args.run_dir, resume=args.resume,
                               progress=progress, cancel=token)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if main_rank:
        last = result.history[-1] if result.history else {}
        print(f"run folder: {result.run_dir}")
        print(f"best checkpoint: {result.best_checkpoint} ({last.get('monitor', 'metric')} best {result.best_metric:.4g})")
        print(f"last checkpoint: {result.last_checkpoint}")
        if result.stopped:
            print(f"stopped: {result.stopped}")
    if result.stopped == "cancelled":  # Ctrl-C: not a finished run, whatever was saved
        if main_rank:
            print(f"surgseg: training interrupted; continue with: surgseg train {args.method} --run-dir "
                  f"{args.run_dir} --resume", file=sys.stderr)
        return 130
    return 0


def _evaluate_out_free(out: Path, overwrite: bool) -> None:
    """Refuse (before the evaluation runs) an --out that holds an earlier evaluation."""
    from ..errors import WriteError

    if overwrite:
        return
    table = out.with_suffix(".md")
    if out.exists():
        raise WriteError(f"{out} already exists (an earlier evaluation): choose another --out, or overwrite "
                         "(--overwrite) to replace it")
    if table.exists() and out.suffix.lower() != ".md":
        raise WriteError(f"{table} exists without {out}: an unfinished earlier evaluation (its JSON is written "
                         "last) or another file of that name; choose another --out, or overwrite (--overwrite)")


def run_evaluate(args) -> int:
    from ..atomic import atomic_write_group
    from ..provenance import dumps, sidecar_path
    from ..errors import ConfigError
    from ..training.inference import evaluate_checkpoint

    if args.out:
        if args.out.suffix.lower() == ".md":
            raise ConfigError(f"--out {args.out}: the metrics are JSON (a method's table goes next to it as .md); "
                              "give a .json name")
        _evaluate_out_free(args.out, args.overwrite)
    metrics = evaluate_checkpoint(args.method, args.checkpoint, args.data, _user_config(args),
                                  progress=TextProgress("evaluate"))
    # a method may return a ready-made text table (liver: the paper's Table 5/6 layout) or a
    # markdown one (f2paseg: Table 2), written next to --out as .md
    table = metrics.pop("table") if isinstance(metrics.get("table"), str) else None
    markdown = metrics.pop("markdown") if isinstance(metrics.get("markdown"), str) else None
    text = json.dumps(metrics, indent=1, sort_keys=True)
    if args.out:
        # one result: the table (if any) first, the JSON last as its completion marker; an old .md
        # the new run does not replace goes with the old JSON (--overwrite)
        table_path = args.out.with_suffix(".md")
        files = [(table_path, markdown + "\n")] if markdown else []
        stale = [table_path] if not markdown and args.overwrite and table_path.is_file() else []
        files.append((sidecar_path(args.out), dumps(_metrics_provenance(args)) + "\n"))
        atomic_write_group(files + [(args.out, text + "\n")], remove=stale)
    print(text)
    for t in (table, markdown):
        if t:
            print(t)
    return 0


def _metrics_provenance(args) -> dict:
    """What ``<out>.provenance.json`` holds: the checkpoint and its hash, the data folder."""
    from ..provenance import build_provenance, checkpoint_identity, folder_fingerprint
    from ..training.inference import resolve_checkpoint

    checkpoint, _ = resolve_checkpoint(args.checkpoint, args.method)
    return build_provenance(result="metrics", model=checkpoint_identity(args.method, checkpoint),
                            data=folder_fingerprint(args.data), options=_user_config(args))


def run_predict(args) -> int:
    from ..training.inference import predict_with_checkpoint

    written = predict_with_checkpoint(args.method, args.checkpoint, args.inputs, args.out, _user_config(args),
                                      progress=TextProgress("predict"), overwrite=args.overwrite)
    for path in written:
        print(path)
    return 0
