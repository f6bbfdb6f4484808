"""Training the liver method with the shared trainer (one small model per
session, see _liver_helpers), its held-out Dice, two-stage training,
evaluation in the paper's table layout and prediction on a video."""
import json

import pytest

from _liver_helpers import SMALL_MODEL, held_out_dice, synthetic_liver_splits, trained_liver_model
from surgseg_core.errors import ConfigError

pytestmark = pytest.mark.slow


def test_small_model_reaches_dice_on_held_out_seeds():
    result, cfg, seconds = trained_liver_model()
    assert result.best_checkpoint.is_file()
    dice = held_out_dice(result.best_checkpoint, synthetic_liver_splits()["test"])
    print(f"liver: trained in {seconds:.0f} s, held-out Dice {dice}")
    assert dice["mean"] >= 0.6, dice


def test_two_stage_fine_tunes_from_stage1_best(tmp_path):
    import yaml

    from surgseg_core.methods.liver.train import train_two_stage

    splits = synthetic_liver_splits()
    s1 = {**SMALL_MODEL, "train_root": str(splits["val"]), "epochs": 1, "batch_size": 6, "device": "cpu",
          "lr": 1e-3}
    s2 = {"train_root": str(splits["test"]), "val_root": str(splits["val"]), "epochs": 1, "batch_size": 6,
          "device": "cpu"}
    r1, r2 = train_two_stage(s1, s2, tmp_path)
    cfg2 = yaml.safe_load((tmp_path / "stage2" / "config.yaml").read_text())
    assert cfg2["init_weights"] == str(r1.best_checkpoint)
    # paper's fine-tuning defaults: 0.75 wCE + 0.25 FTL, lr 1e-4, reduce-on-plateau x0.2, patience 7
    assert (cfg2["loss_alpha"], cfg2["loss_delta"], cfg2["lr"]) == (0.75, 0.25, 1e-4)
    assert (cfg2["scheduler"], cfg2["plateau_factor"], cfg2["early_stopping_patience"]) == ("plateau", 0.2, 7)
    assert r2.best_checkpoint.is_file()
    with pytest.raises(ConfigError, match="architecture"):
        train_two_stage(s1, {**s2, "encoder": "resnet34"}, tmp_path, resume=True)


def test_evaluate_prints_paper_table_rows():
    from surgseg_core.training.inference import evaluate_checkpoint

    result, cfg, _ = trained_liver_model()
    data = synthetic_liver_splits()["test"]
    metrics = evaluate_checkpoint("liver", result.best_checkpoint, data,
                                  {"stage1_checkpoint": str(result.last_checkpoint)}, device="cpu")
    table = metrics["table"]
    lines = table.splitlines()
    assert [ln.split("  ")[0].strip() for ln in lines[2:]] == ["initial training", "fine-tuning", "post-processing"]
    for row in ("initial", "tune", "post"):
        for m in ("precision", "dice", "G"):
            v = metrics[f"{row}/mean/{m}"]
            assert 0.0 <= v <= 1.5
    # raw stage-2 numbers agree with the held-out Dice at the same resolution
    assert metrics["tune/mean/dice"] == pytest.approx(held_out_dice(result.best_checkpoint, data)["mean"], abs=1e-6)


def test_predict_video_writes_landmarks(tmp_path):
    from surgseg_core.methods.liver.export import read_landmarks_json
    from surgseg_core.synth import write_liver_dataset
    from surgseg_core.training.inference import predict_with_checkpoint

    result, _, _ = trained_liver_model()
    clip = write_liver_dataset(tmp_path / "clip", seed=30, n_frames=3, height=128, width=160)
    (folder,) = predict_with_checkpoint("liver", result.best_checkpoint, [clip / "video.mp4"], tmp_path / "out",
                                        device="cpu")
    assert sorted(p.name for p in (folder / "labels").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    frames = read_landmarks_json(folder / "landmarks.json")
    assert sorted(frames) == [0, 1, 2]
    assert any(len(v) for f in frames.values() for v in f.values())
    prov = json.loads((folder / "landmarks.json").read_text())["provenance"]
    assert prov["model"]["arch"] == "unet" and prov["postprocess"]["join_distance"] == 15.0
    assert (folder / "landmarks.csv").read_text().startswith("frame,class_id")
    assert len(list((folder / "xml").glob("*.xml"))) == 3


def test_cli_two_stage_training(tmp_path, capsys):
    import yaml

    from surgseg_core.cli.main import main

    splits = synthetic_liver_splits()
    s1 = {**SMALL_MODEL, "train_root": str(splits["val"]), "epochs": 1, "batch_size": 6, "device": "cpu", "lr": 1e-3}
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(s1))
    run = tmp_path / "run"
    rc = main(["train", "liver", "--config", str(tmp_path / "stage1.yaml"), "--run-dir", str(run),
               "--fine-tune-set", f"train_root={splits['test']}", "--fine-tune-set", f"val_root={splits['val']}",
               "--fine-tune-set", "epochs=1", "--fine-tune-set", "batch_size=6", "--fine-tune-set", "device=cpu"])
    assert rc == 0
    best1 = run / "stage1" / "checkpoints" / "best.pt"
    cfg2 = yaml.safe_load((run / "stage2" / "config.yaml").read_text())
    assert cfg2["init_weights"] == str(best1) and cfg2["train_root"] == str(splits["test"])
    assert (cfg2["lr"], cfg2["loss_alpha"], cfg2["loss_delta"]) == (1e-4, 0.75, 0.25)
    assert (run / "stage2" / "checkpoints" / "best.pt").is_file()
    out = capsys.readouterr().out
    assert f"stage1_checkpoint={best1}" in out
    # two stages are a recipe of the methods whose spec has one (liver), not of sam2
    assert main(["train", "sam2", "--run-dir", str(tmp_path / "x"), "--fine-tune-set", "lr=1"]) == 1
    err = capsys.readouterr().err
    assert "'sam2' has no two-stage training" in err and "liver" in err.split("methods with one:")[1]
