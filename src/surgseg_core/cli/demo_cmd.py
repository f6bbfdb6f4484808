"""``surgseg demo``: the offline demo on the bundled synthetic sample."""
from __future__ import annotations

import argparse
import logging

_EPILOG = """examples:
  surgseg demo --out runs/demo                 # everything (a few minutes on a laptop CPU)
  surgseg demo --out runs/demo --quick         # shorter training and tracking
  surgseg demo --out runs/demo --steps video sam2
  surgseg demo --out runs/demo --liver-checkpoint runs/liver/checkpoints/best.pt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the offline demo on the bundled sample and write a report",
        description="Run every finished part of the pipeline on the bundled synthetic sample and write "
        "report.md, summary.json, masks, an overlay video and figures into --out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="shorter training and tracking")
    p.add_argument("--steps", nargs="+", choices=["video", "sam2", "liver"], help="run only these steps")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--liver-checkpoint", help="use this liver checkpoint instead of training one")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..demo import run_demo
    from ..progress import TextProgress

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = run_demo(args.out, quick=args.quick, device=args.device, steps=args.steps,
                    liver_checkpoint=args.liver_checkpoint, progress=TextProgress("demo"))
    print(path.read_text())
    print(f"report written to {path}")
    return 0
