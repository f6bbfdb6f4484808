"""The bundled demonstration weights (sample_data/*_demo): each folder's
weights.json pins its file's SHA-256 and is offered by name, its model card
says what it is (not a clinical model), how it was made (the exact command,
in scripts/train_demo_weights.sh) and its held-out scores; all weights
together stay within 40 MB."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = sorted((REPO / "sample_data").glob("*_demo"))


def test_every_bundled_model_is_pinned_registered_and_explained():
    from surgseg_core.weights import list_weights
    from surgseg_core.weights.hashing import sha256_file

    if not FOLDERS:
        pytest.skip("no bundled demo weights in sample_data/")
    script = (REPO / "scripts" / "train_demo_weights.sh").read_text()
    listed = {e.name: e for e in list_weights()}
    total = 0
    for folder in FOLDERS:
        meta = json.loads((folder / "weights.json").read_text())
        weights = folder / meta["file"]
        assert weights.suffix == ".safetensors" and sha256_file(weights) == meta["sha256"], folder
        total += weights.stat().st_size
        entry = listed[meta["name"]]
        assert entry.source == "bundled" and entry.method == meta["method"] and entry.variant == meta.get("variant")
        card = (folder / "MODEL_CARD.md").read_text()
        assert "not a clinical model" in card and meta["sha256"] in card
        assert "held-out" in card.lower() and meta["metrics"], folder
        command = card.split("Command (exact): `")[1].split("`")[0]
        module = command.split()[2]  # python -m MODULE OUT ...
        assert module in script and f"--export {weights.relative_to(REPO)}" in command.replace(str(REPO) + "/", "")
    assert total <= 40e6, f"bundled weights take {total / 1e6:.1f} MB (limit 40 MB)"


def test_training_in_two_processes_shares_the_threads_and_reports_every_process(tmp_path, monkeypatch):
    """``train_with_budget(processes=2)``: two DDP processes (gloo) as torchrun
    would start them; data sharded (16 samples, batch 4: 2 steps an epoch),
    one set of checkpoints, rank 0's summary with both processes' CPU time."""
    import torch

    from surgseg_core.methods.demo_weights import train_with_budget
    from surgseg_core.training.checkpoint import load_checkpoint

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))  # spawned processes import _toy_method
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    config = {"epochs": 2, "n_train": 16, "batch_size": 4, "device": "cpu", "seed": 0}
    summary = train_with_budget("_toy_method:toy", config, tmp_path / "run", processes=2)
    assert summary["processes"] == 2 and "2 DDP processes (gloo) x 1 torch thread" in summary["machine"]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["world_size"] == 2 and ckpt["step"] == 4 and summary["steps"] == 4
    assert summary["epochs_done"] == 2 and summary["best_checkpoint"]
    assert summary["train_cpu_seconds"] > 0


def test_demo_command_line_offers_processes_where_the_demo_trains_in_several(tmp_path):
    """``--processes N`` reaches a demo's ``train`` and the card's exact command;
    a demo whose training cannot run in several processes refuses the option."""
    from surgseg_core.methods.demo_weights import demo_main

    got = {}

    def train(out, max_minutes, *, clock="cpu", processes=1):
        got["processes"] = processes
        return {"max_minutes": max_minutes, "budget_clock": clock, "processes": processes}

    def export(out, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"w")
        return target

    def write_card(folder, weights, summary, scores, command, notes):
        got["command"] = command
        return command

    doc = "``python -m surgseg_core.methods.fake.demo OUT``"
    target = tmp_path / "export" / "fake.safetensors"
    argv = [str(tmp_path / "out"), "--max-minutes", "2", "--clock", "cpu", "--processes", "2", "--export", str(target)]
    assert demo_main(argv, doc=doc, train=train, export=export, score=lambda out, w: {}, write_card=write_card,
                     export_name="fake.safetensors") == 0
    assert got["processes"] == 2
    assert got["command"] == f"python -m surgseg_core.methods.fake.demo OUT --max-minutes 2 --clock cpu --processes 2 --export {target}"

    def train_one_process(out, max_minutes, *, clock="cpu"):
        raise AssertionError("not reached")

    with pytest.raises(SystemExit) as exc:
        demo_main(argv, doc=doc, train=train_one_process, export=export, score=lambda out, w: {},
                  write_card=write_card, export_name="fake.safetensors")
    assert exc.value.code == 2


def test_rescoring_the_demo_sam2_replaces_its_scores_and_keeps_its_weights_and_record(tmp_path):
    """A held-out set changed after training (issue 10: 12 -> 60 clips) is
    scored on the bundled weights without retraining: weights.json gets the
    new metrics and seeds (same file, hash and creation time), the card's
    held-out section the new table, every other section of the card stays."""
    import shutil

    from surgseg_core.methods.sam2 import demo
    from surgseg_core.synth import write_synthetic_clip

    src = REPO / "sample_data" / "sam2_demo"
    if not (src / "weights.json").is_file():
        pytest.skip("no bundled demo SAM2 in sample_data/")
    folder = tmp_path / "sam2_demo"
    shutil.copytree(src, folder)
    before = json.loads((folder / "weights.json").read_text())
    card_before = (folder / "MODEL_CARD.md").read_text()
    heldout = tmp_path / "heldout"
    for seed in (9001, 9002):
        write_synthetic_clip(heldout / f"clip_{seed}", seed=seed, n_frames=8, height=120, width=160)
    scores = demo.rescore_bundle(folder, heldout, seeds=(9001, 9002))

    after = json.loads((folder / "weights.json").read_text())
    assert {k: after[k] for k in ("file", "sha256", "created", "name")} == {
        k: before[k] for k in ("file", "sha256", "created", "name")}
    assert after["metrics"]["heldout_seeds"] == [9001, 9002]
    assert after["metrics"]["heldout_objects"] == scores["trained"]["objects"] > 0
    assert after["metrics"]["heldout_mean_iou"] == round(scores["trained"]["mean_iou"], 4)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "(9001, 9002, 2 clips)" in card
    assert f"| this model | {scores['trained']['objects']} |" in card
    head, _, rest = card_before.partition("## Held-out scores\n")
    assert card.startswith(head)
    kept = rest[rest.index("\n## "):]  # the sections after the held-out one
    assert card.endswith(kept)


def test_rescore_option_replaces_the_heldout_section_and_metrics_and_keeps_the_record(tmp_path):
    """``--rescore FOLDER`` (a demo whose held-out data changed after its
    weights were trained, e.g. a new generator version): no training, the
    weights scored as they are; the card's held-out section becomes the new one
    with the notes at its end, the sections before and after it stay, and
    weights.json gets the new metrics with the same file, hash and creation
    time (other metrics kept)."""
    from surgseg_core.methods.demo_weights import demo_main, write_weights_json

    folder = tmp_path / "fake_demo"
    folder.mkdir()
    weights = folder / "fake.safetensors"
    weights.write_bytes(b"weights")
    write_weights_json(folder, name="fake-demo", weights=weights, method="sam2", created="2026-01-01T00:00:00Z",
                       metrics={"heldout_score": 0.5, "kept": 1})
    head = "# fake-demo\n\n- Command (exact): `python -m x OUT`\n"
    tail = "\n## What it does\n\nTrained once.\n"
    (folder / "MODEL_CARD.md").write_text(head + "\n## Held-out scores (old)\n\nscore 0.5\n" + tail)
    notes = tmp_path / "notes.md"
    notes.write_text("Re-scored on generator version 3.\n")
    seen = {}

    def rescore(out, w):
        seen["args"] = (Path(out), Path(w))
        return {"heldout_score": 0.7}, "## Held-out scores (new)\n\nscore 0.7\n"

    def never(*a, **k):
        raise AssertionError("no training, export or card writing when rescoring")

    argv = [str(tmp_path / "out"), "--rescore", str(folder), "--notes", str(notes)]
    assert demo_main(argv, doc="", train=never, export=never, score=never, write_card=never,
                     export_name="fake.safetensors", rescore=rescore) == 0
    assert seen["args"] == (tmp_path / "out", weights)
    card = (folder / "MODEL_CARD.md").read_text()
    assert card == head + "\n## Held-out scores (new)\n\nscore 0.7\n\nRe-scored on generator version 3.\n" + tail
    meta = json.loads((folder / "weights.json").read_text())
    assert meta["metrics"] == {"heldout_score": 0.7, "kept": 1} and meta["created"] == "2026-01-01T00:00:00Z"
    # A demo without a rescore function does not offer the option.
    with pytest.raises(SystemExit):
        demo_main(argv, doc="", train=never, export=never, score=never, write_card=never,
                  export_name="fake.safetensors")
