"""``surgseg demo``: the offline demo on the bundled synthetic sample."""
from __future__ import annotations

import argparse
import logging

_EPILOG = """examples:
  surgseg demo --out runs/demo                 # everything (a few minutes on a laptop CPU)
  surgseg demo --out runs/demo --quick         # shorter training and tracking
  surgseg demo --out runs/demo --steps anatomy clicks
  surgseg demo --napari                        # napari with the sample, every widget docked, prompts placed
  surgseg demo --out runs/demo --liver-checkpoint runs/liver/checkpoints/best.pt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the offline demo on the bundled sample and write a report",
        description="Run every method on the bundled synthetic sample with the bundled demonstration weights and "
        "write report.md, summary.json, scores.json, label TIFFs, landmark CSV/JSON, an overlay video of all "
        "results and a contact sheet into --out.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="shorter training and tracking")
    from ..demo import STEPS

    p.add_argument("--steps", nargs="+", choices=list(STEPS), help="run only these steps")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--liver-checkpoint", help="use this liver checkpoint instead of training one")
    p.add_argument("--napari", action="store_true",
                   help="open napari with the sample, every widget docked, demo weights chosen and prompts placed")
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)  # --napari: set up, then close (tests)
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.napari:  # its own process: the core never imports napari or Qt
        import subprocess
        import sys

        return subprocess.call([sys.executable, "-m", "napari_surgseg.demo_session", *(["--check"] if args.check else [])])
    import json

    from ..demo import run_demo, summary_lines
    from ..progress import TextProgress

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = run_demo(args.out, quick=args.quick, device=args.device, steps=args.steps,
                    liver_checkpoint=args.liver_checkpoint, progress=TextProgress("demo"))
    summary = json.loads((path.parent / "summary.json").read_text())
    scores = json.loads((path.parent / "scores.json").read_text())
    print("\n".join(summary_lines(summary, scores)))
    print(f"results in {path.parent}: report.md, scores.json, contact_sheet.png, all_results_overlay.mp4, ...")
    return 0
