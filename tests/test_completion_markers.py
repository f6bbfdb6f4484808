"""Completion markers of `surgseg predict` and `surgseg evaluate --out`
(issue 15): a run stopped between two writes leaves its output recognisably
unfinished, and a rerun over an earlier run refuses without --overwrite,
then replaces it cleanly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import _toy_method  # noqa: F401  (registers "toy")
from surgseg_core.cli.main import main


def _images(root, n, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray((img[..., 0] > img[..., 1]).astype(np.uint8)).save(root / "masks" / f"f{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("markers")
    run = root / "run"
    assert main(["train", "toy", "--run-dir", str(run), "--set", "epochs=1", "--device", "cpu"]) == 0
    return run / "checkpoints" / "last.pt", _images(root / "data", 3)


def _marker(folder, name="surgseg_predict.json"):
    return json.loads((folder / name).read_text())


def test_predict_stopped_after_its_first_file_is_marked_unfinished_and_a_rerun_refuses(trained, tmp_path,
                                                                                        monkeypatch, capsys):
    ckpt, data = trained
    out = tmp_path / "preds"
    args = ["predict", "toy", "--checkpoint", str(ckpt), str(data / "images"), "--out", str(out)]
    real_save, seen = Image.Image.save, []

    def save_then_fail(self, fp, *a, **k):
        if seen:  # the second mask: the run dies here
            raise RuntimeError("simulated crash after the first file")
        seen.append(_marker(out))  # what the folder says while the run writes
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(args)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert seen[0]["status"] == "running"  # marked before the first output
    assert (out / "f0_mask.png").is_file() and not (out / "f1_mask.png").exists()
    assert _marker(out)["status"] == "failed"  # recognisably unfinished

    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "holds an earlier prediction run" in err and "unfinished (failed)" in err and "--overwrite" in err
    assert err.count("\n") == 1

    assert main(args + ["--overwrite"]) == 0
    marker = _marker(out)
    assert marker["status"] == "completed" and marker["outputs"] == ["f0_mask.png", "f1_mask.png", "f2_mask.png"]
    assert sorted(p.name for p in out.iterdir()) == ["f0_mask.png", "f1_mask.png", "f2_mask.png",
                                                     "surgseg_predict.json"]


def test_predict_over_a_completed_run_refuses_and_overwrite_removes_its_files(trained, tmp_path, capsys):
    ckpt, data = trained
    out = tmp_path / "preds"
    base = ["predict", "toy", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main(base + [str(data / "images")]) == 0
    (out / "notes.txt").write_text("the user's own file")
    fewer = _images(tmp_path / "fewer", 1, seed=3)
    capsys.readouterr()
    assert main(base + [str(fewer / "images")]) == 1
    assert "(surgseg_predict.json: completed)" in capsys.readouterr().err
    assert main(base + [str(fewer / "images"), "--overwrite"]) == 0
    # the earlier run's masks went (they would mix with the new one's); the user's file stays
    assert sorted(p.name for p in out.iterdir()) == ["f0_mask.png", "notes.txt", "surgseg_predict.json"]
    assert _marker(out)["inputs"] == [str(fewer / "images")]


def test_predict_under_torchrun_writes_one_marker_per_process(trained, tmp_path, monkeypatch, capsys):
    ckpt, data = trained
    other = _images(tmp_path / "other", 2, seed=1)
    out = tmp_path / "preds"
    args = ["predict", "toy", "--checkpoint", str(ckpt), str(data / "images"), str(other / "images"),
            "--out", str(out)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):  # a sibling's marker (or files) of this run never counts as an earlier run
        monkeypatch.setenv("RANK", rank)
        assert main(args) == 0
    for rank in (0, 1):
        assert _marker(out, f"surgseg_predict.rank{rank}of2.json")["status"] == "completed"
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    assert main(args) == 1  # its own marker: an earlier run
    assert "surgseg_predict.rank1of2.json: completed" in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(args) == 1  # one process over a 2-process run's folder
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("surgseg_predict*.json")) == ["surgseg_predict.json"]


def _evaluate(ckpt, data, out, *extra):
    return main(["evaluate", "toy", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--set", "with_table=true", *extra])


def test_evaluate_killed_between_table_and_json_leaves_an_unfinished_pair(trained, tmp_path, monkeypatch, capsys):
    from surgseg_core import atomic

    ckpt, data = trained
    out = tmp_path / "metrics.json"
    real_replace, calls = atomic.os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the table is in place, the JSON (the marker) not yet
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    assert _evaluate(ckpt, data, out) == 130
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert out.with_suffix(".md").is_file() and not out.exists()

    capsys.readouterr()
    assert _evaluate(ckpt, data, out) == 1
    err = capsys.readouterr().err
    assert "metrics.md exists without" in err and "unfinished earlier evaluation" in err and err.count("\n") == 1
    assert _evaluate(ckpt, data, out, "--overwrite") == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 3 and f"{metrics['dice']:.3f}" in out.with_suffix(".md").read_text()


def test_evaluate_over_an_earlier_result_refuses_and_overwrite_replaces_the_pair(trained, tmp_path, capsys):
    ckpt, data = trained
    out = tmp_path / "metrics.json"
    assert _evaluate(ckpt, data, out) == 0
    capsys.readouterr()
    assert _evaluate(ckpt, data, out) == 1
    assert "already exists (an earlier evaluation)" in capsys.readouterr().err
    fewer = _images(tmp_path / "fewer", 1, seed=5)
    # without the table this time: the earlier run's table must not stay next to the new JSON
    assert main(["evaluate", "toy", "--checkpoint", str(ckpt), "--data", str(fewer), "--out", str(out),
                 "--overwrite"]) == 0
    assert json.loads(out.read_text())["n"] == 1 and not out.with_suffix(".md").exists()
    # no temporary file; the provenance sidecar is part of the group (written before the JSON)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fewer", "metrics.json", "metrics.json.provenance.json"]
    assert json.loads((tmp_path / "metrics.json.provenance.json").read_text())["result"] == "metrics"


def test_predict_with_a_wrong_checkpoint_leaves_nothing_behind(trained, tmp_path, capsys):
    """A mistake caught before predicting (the checkpoint) writes no marker:
    the corrected rerun needs no --overwrite."""
    ckpt, data = trained
    out = tmp_path / "preds"
    base = ["predict", "toy", str(data / "images"), "--out", str(out), "--checkpoint"]
    assert main(base + [str(tmp_path / "missing.pt")]) == 1
    assert not out.exists() or not list(out.iterdir())
    assert main(base + [str(ckpt)]) == 0


def test_overwrite_under_torchrun_keeps_files_another_process_of_the_new_run_already_wrote(tmp_path):
    """--overwrite removes what an earlier run's marker lists, except files newer
    than that marker: under torchrun another process of the new run may have
    rewritten one already (it must not be deleted under it)."""
    import os
    import time

    from surgseg_core.training.distributed import DistInfo
    from surgseg_core.training.inference import PredictMarker

    out = tmp_path / "preds"
    out.mkdir()
    old_file, rewritten = out / "a.png", out / "b.png"
    old_file.write_bytes(b"old")
    rewritten.write_bytes(b"old")
    marker = out / "surgseg_predict.rank1of2.json"
    marker.write_text(json.dumps({"status": "completed", "outputs": ["a.png", "b.png", "../outside.png"]}))
    (tmp_path / "outside.png").write_bytes(b"not ours")
    t = time.time()
    os.utime(old_file, (t - 20, t - 20))
    os.utime(marker, (t - 10, t - 10))
    os.utime(rewritten, (t, t))  # written by rank 0 of the new run after the old marker
    PredictMarker(out, DistInfo(rank=1, world_size=2), "toy", "ckpt.pt", []).claim(overwrite=True)
    assert not old_file.exists() and rewritten.read_bytes() == b"old"
    assert (tmp_path / "outside.png").exists()  # a listed path outside the folder is never touched
    assert _marker(out, "surgseg_predict.rank1of2.json")["status"] == "running"
