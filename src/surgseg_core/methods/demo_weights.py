"""Shared pieces of the bundled demonstration weights (``sample_data/*/``):
train a method with ``surgseg train``'s trainer under a time budget, export
the result as safetensors, and write the ``weights.json`` that registers it
(read by ``weights/bundled.py``). Each method's ``demo.py`` adds its data,
recipe, held-out scores and model card; ``scripts/train_demo_weights.sh``
runs them all.

Demo weights are demonstration models for synthetic data, not clinical
models: every model card says so, with the exact command that made it.
"""
from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

SAMPLE_DATA = Path(__file__).resolve().parents[3] / "sample_data"

NOT_CLINICAL = ("**A demonstration model for synthetic data, not a clinical model.** It was trained on a CPU, on "
                "the synthetic endoscopy clips of `surgseg_core.synth`, and has never seen a real image.")


class _CpuBudget(threading.Thread):
    """Cancels ``token`` once this process has used ``seconds`` of CPU time."""

    def __init__(self, token, seconds: float) -> None:
        super().__init__(daemon=True)
        self.token, self.seconds, self.cpu0 = token, float(seconds), time.process_time()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            if time.process_time() - self.cpu0 >= self.seconds:
                self.token.cancel()
                return

    def cancel(self) -> None:
        self.done.set()


def train_with_budget(method: str, config: Mapping[str, Any], run_dir: Path, *,
                      max_minutes: Optional[float] = None, clock: str = "wall", processes: int = 1) -> Dict[str, Any]:
    """What ``surgseg train METHOD`` runs (the method's stages when it has
    them, else ``training.trainer.train``), stopped with a checkpoint after
    ``max_minutes`` when given; returns what a model card reports: wall and
    CPU seconds, epochs, steps, best checkpoint, machine, load.

    ``clock`` "wall": ``max_minutes`` of wall-clock time; "cpu": the CPU time
    ``max_minutes`` on torch's thread count of dedicated cores would give
    (``max_minutes * 60 * threads`` CPU seconds), so that another job on the
    same cores slows the run down without shrinking its training.

    ``processes`` > 1: data-parallel training as ``torchrun`` runs it (gloo,
    the trainer's DDP), torch's threads shared out among the processes (2
    processes of 1 thread on 2 cores); each process has the budget of its
    threads, rank 0's stop stops all. Why: small SAM2 steps use a second
    thread poorly (the demo SAM2's clip step: 418 ms on 2 threads, 545 on 1),
    so two 1-thread processes train about twice the clips in the same CPU time."""
    if processes > 1:
        return _train_processes(method, config, run_dir, max_minutes=max_minutes, clock=clock, processes=processes)
    import torch

    from ..progress import CancelToken
    from ..training.method import get_method
    from ..training.stages import train_stages
    from ..training.trainer import train

    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    token = CancelToken()
    timer = None
    if max_minutes and clock == "wall":
        timer = threading.Timer(max_minutes * 60.0, token.cancel)
        timer.daemon = True
    elif max_minutes:
        timer = _CpuBudget(token, max_minutes * 60.0 * torch.get_num_threads())
    cpu0, t0 = time.process_time(), time.time()
    if timer is not None:
        timer.start()
    spec = get_method(method)
    config = {"validate_on_stop": True, **dict(config)}  # the budget's last, partial epoch can hold the best weights
    recipe = spec.stages(dict(config), Path(run_dir)) if spec.stages is not None else None
    try:
        if recipe:
            results = train_stages(method, recipe, run_dir, cancel=token).results
        else:
            results = [train(method, dict(config), run_dir=run_dir, cancel=token)]
    finally:
        if timer is not None:
            timer.cancel()
    result = results[-1]
    return {
        "method": method,
        "max_minutes": max_minutes,
        "budget_clock": clock,
        "train_seconds": round(time.time() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - cpu0, 1),
        "epochs_done": sum(len(r.history) for r in results),
        "steps": sum(r.history[-1]["step"] for r in results if r.history) or None,
        "stages": [Path(r.run_dir).name for r in results] if recipe else None,
        "stopped": result.stopped,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "best_metric": result.best_metric,
        "load_average": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "config": dict(config),
    }


def hardware_line(summary: Mapping[str, Any]) -> str:
    """"N s wall clock (M s CPU) on MACHINE, no other job running" for a card."""
    cpus = os.cpu_count() or 1
    load = summary.get("load_average") or (0.0,)
    shared = ("the cores shared with other jobs (the CPU time is the fair measure)"
              if load[0] > cpus + 0.5 else "no other job running")
    return (f"{summary['train_seconds']:.0f} s wall clock of training ({summary['train_cpu_seconds']:.0f} s of CPU "
            f"time, {summary.get('steps')} optimizer steps, {summary.get('epochs_done')} epochs) on "
            f"{summary['machine']}, {shared} (load average {', '.join(f'{x:.1f}' for x in load)} at the end). "
            "No GPU was used.")


def export_checkpoint(checkpoint: Path, target: Path) -> Path:
    """A ``surgseg train`` checkpoint as safetensors that ``surgseg
    evaluate/predict --checkpoint NAME`` and the widgets load like the ``.pt``."""
    from ..training.checkpoint import load_checkpoint
    from ..weights.state_dict import write_method_safetensors

    return write_method_safetensors(load_checkpoint(checkpoint), target)


def write_weights_json(folder: Path, *, name: str, weights: Path, method: str, metrics: Mapping[str, Any],
                       config: Optional[str] = None, base: Optional[str] = None,
                       variant: Optional[str] = None, created: Optional[str] = None) -> Dict[str, Any]:
    """``weights.json`` beside ``weights`` (atomic): the registry entry of a
    bundled model, with its pinned SHA-256; ``created``: keep this time
    (re-scored weights), else now."""
    from ..atomic import atomic_write_text
    from ..weights.hashing import sha256_file

    meta = {"name": name, "file": weights.name, "sha256": sha256_file(weights), "method": method,
            "config": config, "base": base, "variant": variant, "size_bytes": weights.stat().st_size,
            "metrics": dict(metrics), "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(Path(folder) / "weights.json", json.dumps(meta, indent=1, default=str) + "\n")
    return meta


def replace_heldout(folder: Path, section: str, metrics: Mapping[str, Any]) -> None:
    """Re-scored bundled weights (the held-out set or the synthetic generator
    changed after they were trained): the card's "## Held-out scores ..."
    section becomes ``section`` and ``metrics`` replace those of the same name
    in ``weights.json``; the weights, their hash, ``created`` and every other
    section of the card (the training record) stay as they are."""
    from ..atomic import atomic_write_text

    folder = Path(folder)
    meta = json.loads((folder / "weights.json").read_text())
    card_path = folder / "MODEL_CARD.md"
    card = card_path.read_text(encoding="utf-8")
    start = card.find("\n## Held-out scores") + 1
    if start <= 0:
        raise ValueError(f"{card_path} has no '## Held-out scores' section to replace")
    end = card.find("\n## ", start + 1)
    card = card[:start] + section.rstrip("\n") + "\n" + ("" if end < 0 else card[end:])
    write_weights_json(folder, name=meta["name"], weights=folder / meta["file"], method=meta["method"],
                       config=meta.get("config"), base=meta.get("base"), variant=meta.get("variant"),
                       created=meta.get("created"), metrics={**meta.get("metrics", {}), **dict(metrics)})
    atomic_write_text(card_path, card)


def bundled_weights(name: str) -> Optional[Path]:
    """The file of bundled weights ``name`` when present (None otherwise)."""
    from ..weights.bundled import bundled_entries

    for entry in bundled_entries():
        if entry.name == name:
            return entry.file
    return None


def add_clock_argument(parser) -> None:
    """``--clock cpu|wall`` of every demo command line (see ``train_with_budget``)."""
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu (default): the budget is the CPU time of --max-minutes on torch's threads (other jobs "
                             "on the machine slow the run down without shortening its training); wall: wall-clock "
                             "minutes")


def demo_main(argv, *, doc: str, train, export, score, write_card, export_name: str, rescore=None) -> int:
    """The command line every method's ``demo.py`` shares:
    ``python -m surgseg_core.methods.M.demo OUT [--max-minutes N] [--clock cpu|wall] [--export FILE] [--only-score]
    [--notes MD]`` (and ``--processes N`` where ``train`` takes ``processes``, ``--rescore FOLDER`` where
    ``rescore`` is given).

    ``train(out, max_minutes, clock=...) -> summary``; ``export(out, target) -> target``;
    ``score(out, weights) -> scores``; ``write_card(folder, weights, summary,
    scores, command, notes) -> card text`` (it also writes ``weights.json``);
    the card is written here, as ``MODEL_CARD.md`` beside the weights.
    ``rescore(out, weights) -> (metrics, held-out section)``: writes the
    held-out data under ``out`` and scores ``weights`` on it, for
    ``replace_heldout`` (the notes go at the end of the new section)."""
    import argparse
    import inspect
    import logging

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="work folder (data, training run, scores)")
    p.add_argument("--max-minutes", type=float, default=None, help="training time budget")
    add_clock_argument(p)
    p.add_argument("--export", type=Path, help=f"write the weights here (e.g. sample_data/.../{export_name}), "
                                                "score them and write weights.json + MODEL_CARD.md beside them")
    p.add_argument("--only-score", action="store_true", help="skip training; export + score OUT's run")
    p.add_argument("--notes", type=Path, help="markdown appended to the model card (what was observed)")
    takes_processes = "processes" in inspect.signature(train).parameters
    if takes_processes:
        p.add_argument("--processes", type=int, default=1,
                       help="train in N DDP processes with torch's threads shared out (see train_with_budget)")
    if rescore is not None:
        p.add_argument("--rescore", type=Path, metavar="FOLDER",
                       help="no training: score the bundled weights in FOLDER (e.g. sample_data/..._demo) on the "
                            "held-out data (written under OUT/data) and replace its weights.json metrics and its "
                            "card's held-out section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if getattr(args, "rescore", None):
        folder = Path(args.rescore)
        meta = json.loads((folder / "weights.json").read_text())
        metrics, section = rescore(out, folder / meta["file"])
        notes = "\n" + args.notes.read_text(encoding="utf-8") if args.notes else ""
        replace_heldout(folder, section.rstrip("\n") + "\n" + notes, metrics)
        print(json.dumps(metrics, indent=1, default=str), flush=True)
        return 0
    summary_path = out / "train_summary.json"
    if not args.only_score:
        extra = {"processes": args.processes} if takes_processes and args.processes > 1 else {}
        summary = train(out, args.max_minutes, clock=args.clock, **extra)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str), flush=True)
    if args.export:
        summary = json.loads(summary_path.read_text())
        export(out, args.export)
        t0 = time.time()
        scores = score(out, args.export)
        scores["score_seconds"] = round(time.time() - t0, 1)
        (out / "heldout_scores.json").write_text(json.dumps(scores, indent=1, default=str))
        module = doc.split("``python -m ")[1].split(" ")[0] if "``python -m " in doc else "the method's demo module"
        minutes = f" --max-minutes {summary['max_minutes']:g}" if summary.get("max_minutes") else ""
        clock = f" --clock {summary.get('budget_clock', 'wall')}" if summary.get("max_minutes") else ""
        procs = f" --processes {summary['processes']}" if (summary.get("processes") or 1) > 1 else ""
        command = f"python -m {module} OUT{minutes}{clock}{procs} --export {args.export}"
        notes = "\n" + args.notes.read_text(encoding="utf-8") if args.notes else ""
        from ..atomic import atomic_write_text

        card = args.export.parent / "MODEL_CARD.md"
        atomic_write_text(card, write_card(args.export.parent, args.export, summary, scores, command, notes))
        print(card)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, threads: int, method: str, config: Dict[str, Any], run_dir: str,
               max_minutes: Optional[float], clock: str, out: str) -> None:
    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    summary = train_with_budget(method, config, Path(run_dir), max_minutes=max_minutes, clock=clock)
    from ..atomic import atomic_write_text

    atomic_write_text(Path(out) / f"rank{rank}.json", json.dumps(summary, default=str))


def _train_processes(method: str, config: Mapping[str, Any], run_dir: Path, *, max_minutes: Optional[float],
                     clock: str, processes: int) -> Dict[str, Any]:
    """``train_with_budget`` in ``processes`` DDP processes (spawned, as
    ``torchrun --nproc_per_node`` would start them); the summary is rank 0's
    with the CPU seconds of all processes."""
    import tempfile

    import torch
    import torch.multiprocessing as mp

    threads = max(1, torch.get_num_threads() // processes)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="surgseg-ranks-") as out:
        mp.start_processes(_rank_main, nprocs=processes, start_method="spawn", join=True,
                           args=(processes, _free_port(), threads, method, dict(config), str(run_dir),
                                 max_minutes, clock, out))
        ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(processes)]
    summary = dict(ranks[0])
    summary.update(
        train_seconds=round(time.time() - t0, 1),
        train_cpu_seconds=round(sum(r["train_cpu_seconds"] for r in ranks), 1),
        processes=processes,
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, {processes} DDP processes (gloo) x {threads} torch "
                f"thread{'s' if threads > 1 else ''}",
    )
    return summary
