"""The shared trainer on a tiny real conv net (tests/_toy_method.py), CPU."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import _toy_method
from surgseg_core.errors import DatasetError, TrainingError, WeightsError
from surgseg_core.progress import CancelToken
from surgseg_core.training.checkpoint import (
    CHECKPOINT_KEYS, capture_rng_state, load_checkpoint, load_model_weights, restore_rng_state,
)
from surgseg_core.training.optim import build_optimizer, build_param_groups, build_scheduler
from surgseg_core.training.run_log import read_metrics
from surgseg_core.training.trainer import train

TESTS = Path(__file__).resolve().parent
CPU = {"device": "cpu"}  # (conftest sets the process's torch threads)


def test_short_run_lowers_loss_and_writes_run_folder(tmp_path):
    result = train("toy", {**CPU, "epochs": 4, "log_every": 2}, run_dir=tmp_path)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0]
    assert result.history[-1]["val_dice"] > result.history[0]["val_dice"]
    assert (tmp_path / "config.yaml").is_file()
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", kind="step")] == list(range(2, 17, 2))
    # Checkpoints load with weights_only=True and hold everything needed to resume.
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert ckpt["epoch"] == 4 and ckpt["method"] == "toy"
    assert ckpt["config"]["lr"] == pytest.approx(0.05)
    best = load_checkpoint(result.best_checkpoint)
    assert best["metrics"]["val_dice"] == pytest.approx(result.best_metric)
    assert result.best_metric == pytest.approx(max(r["val_dice"] for r in result.history))
    model = _toy_method.build_model({})
    load_model_weights(result.best_checkpoint, model)


def test_rng_state_round_trip():
    import random

    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_init_weights_fine_tunes_from_a_checkpoint(tmp_path):
    first = train("toy", {**CPU, "epochs": 3}, run_dir=tmp_path / "a")
    tuned = train("toy", {**CPU, "epochs": 1, "init_weights": str(first.best_checkpoint)}, run_dir=tmp_path / "b")
    scratch = train("toy", {**CPU, "epochs": 1}, run_dir=tmp_path / "c")
    assert tuned.history[0]["train_loss"] < scratch.history[0]["train_loss"]
    assert tuned.history[0]["train_loss"] < first.history[-1]["train_loss"] * 1.05
    with pytest.raises(WeightsError):
        train("toy", {**CPU, "epochs": 1, "init_weights": str(tmp_path / "missing.pt")}, run_dir=tmp_path / "d")


def test_load_model_weights_mismatch_is_clear(tmp_path):
    result = train("toy", {**CPU, "epochs": 1}, run_dir=tmp_path)
    wider = _toy_method.build_model({"width": 8})
    with pytest.raises(WeightsError, match="do not fit this model.*shape mismatch"):
        load_model_weights(result.last_checkpoint, wider)


RESUME_CFG = {**CPU, "epochs": 6, "batch_size": 2, "grad_accum": 2, "scheduler": "cosine", "weight_decay": 0.01,
              "lr": 0.03}


def _losses(run_dir):
    return [r["train_loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run the interrupted ones must reproduce."""
    return train("toy", RESUME_CFG, run_dir=tmp_path_factory.mktemp("reference"))


def test_resume_after_kill9_reproduces_loss_curve(tmp_path, reference):
    ref_losses = [r["train_loss"] for r in reference.history]

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    sets = [a for k, v in {**RESUME_CFG, "sleep_per_step": 0.03}.items() if k != "num_threads"
            for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgseg_core", "train", "_toy_method:toy", "--run-dir", str(run), *sets],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file() and load_checkpoint(last)["epoch"] >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the training process ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    killed_at = load_checkpoint(last)["epoch"]
    assert 2 <= killed_at < 6
    result = train("_toy_method:toy", {"sleep_per_step": 0}, run_dir=run, resume=True)
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == list(range(6))
    np.testing.assert_allclose(_losses(run), ref_losses, rtol=1e-5)
    # the best survives the kill: it is the best validation Dice of all six epochs, those before the kill
    # included (a Dice of argmax masks moves by a few pixels' worth between thread counts and processes, so
    # it is compared with the reference loosely; the losses above are the exact check)
    val = [r["val_dice"] for r in read_metrics(run / "metrics.jsonl")]
    assert result.best_metric == pytest.approx(max(val), rel=1e-9)
    assert result.best_metric == pytest.approx(reference.best_metric, abs=0.02)


def test_stop_mid_epoch_saves_and_resume_matches(tmp_path, reference):
    token = CancelToken()

    def on_event(ev):
        if ev["type"] == "step" and ev["step"] == 9:  # in the middle of epoch 2
            token.cancel()

    stopped = train("toy", RESUME_CFG, run_dir=tmp_path / "run", cancel=token, on_event=on_event)
    assert stopped.stopped == "cancelled"
    ckpt = load_checkpoint(stopped.last_checkpoint)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 9 and ckpt["trainer"]["batch_in_epoch"] > 0
    resumed = train("toy", RESUME_CFG, run_dir=tmp_path / "run", resume=True)
    assert resumed.stopped is None
    np.testing.assert_allclose(_losses(tmp_path / "run"), [r["train_loss"] for r in reference.history], rtol=1e-5)


def test_stop_mid_epoch_with_validate_on_stop_scores_the_partial_epoch_and_still_resumes_exactly(tmp_path, reference):
    """A time budget that ends late in a long epoch: the weights trained so far are validated and become
    best.pt when they beat the earlier epochs (toy: Dice rises every epoch), and the resumed run still
    reproduces the uninterrupted losses."""
    token = CancelToken()

    def on_event(ev):
        if ev["type"] == "step" and ev["step"] == 9:  # in the middle of epoch 2
            token.cancel()

    cfg = {**RESUME_CFG, "validate_on_stop": True}
    stopped = train("toy", cfg, run_dir=tmp_path / "run", cancel=token, on_event=on_event)
    assert stopped.stopped == "cancelled"
    partial = stopped.history[-1]
    assert partial["partial_epoch"] and partial["epoch"] == 2 and partial["step"] == 9
    assert [r["epoch"] for r in stopped.history] == [0, 1, 2]
    assert partial["val_dice"] > stopped.history[1]["val_dice"]  # a better model than the last full epoch
    assert stopped.best_metric == pytest.approx(partial["val_dice"])
    best = load_checkpoint(stopped.best_checkpoint)
    assert best["step"] == 9 and best["metrics"]["val_dice"] == pytest.approx(partial["val_dice"])
    last = load_checkpoint(stopped.last_checkpoint)
    assert last["epoch"] == 2 and last["trainer"]["batch_in_epoch"] > 0
    assert last["trainer"]["best_metric"] == pytest.approx(partial["val_dice"])  # a resumed run knows the best
    resumed = train("toy", cfg, run_dir=tmp_path / "run", resume=True)
    assert resumed.stopped is None
    np.testing.assert_allclose(_losses(tmp_path / "run"), [r["train_loss"] for r in reference.history], rtol=1e-5)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == list(range(6))
    # without the option the stop keeps the old behaviour: no partial record, best from a full epoch
    token2 = CancelToken()
    plain = train("toy", RESUME_CFG, run_dir=tmp_path / "plain", cancel=token2,
                  on_event=lambda ev: token2.cancel() if ev["type"] == "step" and ev["step"] == 9 else None)
    assert [r["epoch"] for r in plain.history] == [0, 1] and load_checkpoint(plain.best_checkpoint)["step"] < 9


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # 4 training + 2 validation loss calls per epoch: call 14 is epoch 2's second batch.
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint is kept"):
        train("toy", {**CPU, "epochs": 4, "nan_at_call": 14}, run_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_early_stopping(tmp_path):
    result = train("toy", {**CPU, "epochs": 10, "lr": 0.0, "monitor": "val_loss", "monitor_mode": "min",
                           "early_stopping_patience": 2}, run_dir=tmp_path)
    assert result.stopped == "early_stopping"
    assert len(result.history) == 3


def test_oom_and_empty_dataset_errors(tmp_path):
    def oom_loss(outputs, batch, cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    spec = dataclasses.replace(_toy_method.toy, loss=oom_loss)
    with pytest.raises(TrainingError, match=r"out of GPU memory.*batch_size=4.*batch_size=2"):
        train(spec, {**CPU, "epochs": 1}, run_dir=tmp_path / "oom")
    empty = dataclasses.replace(_toy_method.toy, build_datasets=lambda cfg: ([], None))
    with pytest.raises(DatasetError, match="training dataset is empty"):
        train(empty, {**CPU, "epochs": 1}, run_dir=tmp_path / "empty")
    with pytest.raises(TrainingError, match="monitor metric 'val_iou' is not produced.*val_dice"):
        train("toy", {**CPU, "epochs": 1, "monitor": "val_iou"}, run_dir=tmp_path / "mon")


class _Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = torch.nn.Linear(2, 4)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
                                           for _ in range(2)])
        self.head = torch.nn.Linear(4, 1)


def test_param_groups_no_decay_and_layer_decay():
    model = _Backbone()
    groups = build_param_groups(model, {"lr": 1.0, "weight_decay": 0.1, "layer_decay": 0.5})
    by_param = {id(p): g for g in groups for p in g["params"]}
    # depth: embed 0, blocks.i -> i+1, head 3; scale = 0.5 ** (3 - depth)
    assert by_param[id(model.patch_embed.weight)]["lr"] == pytest.approx(0.125)
    assert by_param[id(model.blocks[0][0].weight)]["lr"] == pytest.approx(0.25)
    assert by_param[id(model.blocks[1][0].weight)]["lr"] == pytest.approx(0.5)
    assert by_param[id(model.head.weight)]["lr"] == pytest.approx(1.0)
    assert by_param[id(model.head.weight)]["weight_decay"] == pytest.approx(0.1)
    assert by_param[id(model.head.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.blocks[0][1].weight)]["weight_decay"] == 0.0  # LayerNorm
    # Method groups keep their own LR and are split into decay / no-decay.
    groups = build_param_groups(model, {"lr": 1.0, "weight_decay": 0.1},
                                [{"params": model.head.parameters(), "lr": 0.01, "name": "head"}])
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr"] == pytest.approx(0.01)
    assert by_param[id(model.head.bias)]["lr"] == pytest.approx(0.01)
    assert by_param[id(model.head.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.patch_embed.weight)]["lr"] == pytest.approx(1.0)


def test_schedulers():
    model = _Backbone()
    opt = build_optimizer(build_param_groups(model, {"lr": 1.0}), {"lr": 1.0})
    sched = build_scheduler(opt, {"scheduler": "cosine", "epochs": 4, "min_lr_ratio": 0.1})
    lrs = []
    for _ in range(4):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # cosine from 1 to 0.1 over 4 epochs: 0.1 + 0.9 * (1 + cos(pi * e / 4)) / 2
    expected = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(1, 5)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    opt = build_optimizer(build_param_groups(model, {"lr": 1.0}), {"lr": 1.0})
    plateau = build_scheduler(opt, {"scheduler": "plateau", "plateau_patience": 1, "plateau_factor": 0.5})
    for _ in range(3):
        plateau.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_tensorboard_events_hold_the_logged_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed: metrics.jsonl only")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train("toy", {**CPU, "epochs": 2}, run_dir=tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("epoch/train_loss")]
    assert losses == pytest.approx([r["train_loss"] for r in result.history], rel=1e-6)


def test_ctrl_c_stops_training_with_a_nonzero_exit_and_says_how_to_resume(tmp_path):
    """Ctrl-C saves a checkpoint and stops, but the run is not finished:
    exit 130 (as any interrupted command), not 0 (issue 15)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "surgseg_core", "train", "_toy_method:toy", "--run-dir", str(run),
         "--set", "device=cpu", "--set", "epochs=200", "--set", "sleep_per_step=0.05"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # training has started (the first epoch line is written)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "--resume" in err and (run / "checkpoints" / "last.pt").is_file()
