"""surgseg train / evaluate / predict through the CLI entry point."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import _toy_method  # noqa: F401  (registers "toy")
from surgseg_core.cli.main import build_parser, main
from surgseg_core.training.checkpoint import load_checkpoint


def _write_dataset(root, n=4, size=12, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        mask = ((img[..., 0] > img[..., 1]) & (img[..., 0] > img[..., 2])).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"f{i}.png")
    return root


def test_help_has_examples(capsys):
    parser = build_parser()
    for cmd in ("train", "evaluate", "predict"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and f"surgseg {cmd}" in out


def test_train_evaluate_predict(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 5\nlr: 0.5\n")
    run = tmp_path / "run"
    code = main(["train", "toy", "--config", str(cfg), "--set", "epochs=2", "--set", "lr=0.05",
                 "--run-dir", str(run), "--device", "cpu"])
    assert code == 0
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["config"]["epochs"] == 2 and ckpt["config"]["lr"] == pytest.approx(0.05)
    assert ckpt["config"]["device"] == "cpu"
    assert "best checkpoint:" in capsys.readouterr().out

    # --resume with more epochs continues where it stopped.
    assert main(["train", "toy", "--run-dir", str(run), "--resume", "--set", "epochs=3"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3

    data = _write_dataset(tmp_path / "data")
    out_json = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", "toy", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--data", str(data),
                 "--out", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["n"] == 4 and 0.0 <= metrics["dice"] <= 1.0
    assert json.loads(capsys.readouterr().out) == metrics

    preds = tmp_path / "preds"
    assert main(["predict", "toy", "--checkpoint", str(run / "checkpoints" / "best.pt"), str(data / "images"),
                 "--out", str(preds)]) == 0
    written = sorted(p.name for p in preds.iterdir())
    assert written == [f"f{i}_mask.png" for i in range(4)] + ["surgseg_predict.json"]
    marker = json.loads((preds / "surgseg_predict.json").read_text())
    assert marker["status"] == "completed" and marker["outputs"] == [f"f{i}_mask.png" for i in range(4)]
    assert np.asarray(Image.open(preds / "f0_mask.png")).shape == (12, 12)


def test_clear_errors(tmp_path, capsys):
    assert main(["train", "nosuchmethod", "--run-dir", str(tmp_path / "r")]) == 1
    assert "unknown method 'nosuchmethod'" in capsys.readouterr().err
    assert main(["train", "toy", "--run-dir", str(tmp_path / "r"), "--resume"]) == 1
    assert "cannot resume: no checkpoint" in capsys.readouterr().err
    assert main(["train", "toy", "--run-dir", str(tmp_path / "r"), "--set", "epochs"]) == 1
    assert "key=value" in capsys.readouterr().err
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    assert main(["train", "toy", "--run-dir", str(tmp_path / "r2"), "--set", f"data_root={bad}"]) == 1
    err = capsys.readouterr().err
    assert "not in the image_mask layout: missing masks/" in err and err.count("\n") == 1


def test_predict_shares_inputs_between_ranks(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "toy", "--run-dir", str(run), "--set", "epochs=1", "--device", "cpu"]) == 0
    a = _write_dataset(tmp_path / "a", n=1)
    b = _write_dataset(tmp_path / "b", n=2, seed=1)
    monkeypatch.setenv("RANK", "1")  # as set by torchrun for the second of 2 processes
    monkeypatch.setenv("WORLD_SIZE", "2")
    preds = tmp_path / "preds"
    assert main(["predict", "toy", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                 str(a / "images"), str(b / "images"), "--out", str(preds)]) == 0
    # b's 2 frames only, and this process's completion marker
    assert sorted(p.name for p in preds.iterdir()) == ["f0_mask.png", "f1_mask.png", "surgseg_predict.rank1of2.json"]
