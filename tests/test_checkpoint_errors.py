"""Checkpoint files that are not what they should be: every reader (training
checkpoints, trained models, SAM2 state dicts) answers with one WeightsError
naming the file and what was expected, never PyTorch's own text (which
suggests ``weights_only=False``, i.e. running the file's code)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from surgseg_core.errors import WeightsError
from surgseg_core.sam2_engine import load_state_dict_file
from surgseg_core.training.checkpoint import load_checkpoint
from surgseg_core.weights.state_dict import read_checkpoint
from surgseg_core.training.inference import load_trained_model


@pytest.fixture
def files(tmp_path):
    out = {}
    out["text"] = tmp_path / "notes.pt"
    out["text"].write_text("not a checkpoint at all\n" * 20)
    out["png"] = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out["png"])
    out["objects"] = tmp_path / "objects.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1.0)}, out["objects"])
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    out["truncated"] = tmp_path / "truncated.pt"
    out["truncated"].write_bytes(good.read_bytes()[:600])
    out["folder"] = tmp_path / "run"
    out["folder"].mkdir()
    return out


def _no_raw_torch_text(message: str) -> None:
    assert "weights_only" not in message and "Weights only load failed" not in message
    assert "WeightsUnpickler" not in message and "Traceback" not in message


@pytest.mark.parametrize("kind, says", [
    ("text", "not a PyTorch checkpoint"),
    ("png", "not a PyTorch checkpoint"),
    ("objects", "argparse.Namespace"),
    ("truncated", "damaged or incomplete"),
    ("folder", "is a folder"),
])
def test_every_reader_names_the_file_and_what_was_expected(files, kind, says):
    path = files[kind]
    readers = [
        lambda: read_checkpoint(path, expected="a liver model checkpoint"),
        lambda: load_checkpoint(path, expected="a liver model checkpoint"),
        lambda: load_state_dict_file(path),
    ]
    for read in readers:
        with pytest.raises(WeightsError) as err:
            read()
        message = str(err.value)
        assert str(path) in message and says in message, message
        _no_raw_torch_text(message)
    with pytest.raises(WeightsError) as err:
        read_checkpoint(path, expected="a liver model checkpoint")
    assert "a liver model checkpoint" in str(err.value)


def test_trained_model_loader_says_which_method_and_run_file(files):
    with pytest.raises(WeightsError) as err:
        load_trained_model("liver", files["text"])
    message = str(err.value)
    assert str(files["text"]) in message and "liver model checkpoint" in message and "best.pt" in message
    _no_raw_torch_text(message)


def test_missing_file_and_good_file(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "ok.pt")
    assert torch.equal(read_checkpoint(tmp_path / "ok.pt")["model"]["w"], torch.ones(3))


def test_a_checkpoint_overwritten_in_the_middle_is_refused(tmp_path):
    """torch's zip reader does not check CRCs: bytes overwritten inside a
    tensor load silently. Our checkpoints carry a digest of their contents,
    checked on every load (issue 15: a damaged last.pt must not resume)."""
    import torch

    from surgseg_core.errors import WeightsError
    from surgseg_core.training.checkpoint import load_checkpoint, save_checkpoint

    weights = torch.randn(256, 1024)  # 1 MB: the middle of the file lies inside this tensor
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": weights}, "epoch": 3, "config": {"lr": 0.1}})
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], weights) and ckpt["epoch"] == 3
    assert "payload_sha256" not in ckpt  # the reader checks and removes it
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["epoch"] == 3  # what torch alone would have resumed from
    with pytest.raises(WeightsError, match="is damaged: its contents do not match the checksum"):
        load_checkpoint(path)


def test_evaluating_with_plain_weights_of_another_kind_is_refused_before_building(tmp_path, capsys):
    """Plain SAM2 weights given to 'surgseg evaluate liver' used to build the
    liver model first (30 s of retrying an online hub for encoder weights),
    then fail on the keys; refused at once now."""
    import torch
    from safetensors.torch import save_file

    from surgseg_core.cli.main import main

    weights = tmp_path / "sam2_like.safetensors"
    save_file({"image_encoder.trunk.w": torch.zeros(2), "sam_mask_decoder.w": torch.zeros(2)}, str(weights))
    assert main(["evaluate", "liver", "--checkpoint", str(weights), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds SAM2 weights, not a 'liver' training checkpoint" in err and "surgseg weights import" in err
