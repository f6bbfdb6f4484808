"""Weights cache: list / import / verify / register / resolve / download,
checkpoint loading and every error message, with local files only (a
local http.server stands in for Meta's download site)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from surgseg_core.cli.main import main as cli
from surgseg_core.errors import WeightsError
from surgseg_core.sam2_engine import build_model, load_state_dict_file
from surgseg_core.weights import (
    OFFICIAL,
    download_weights,
    import_checkpoint,
    list_weights,
    register_checkpoint,
    resolve_weights,
    verify_weights,
)
from surgseg_core.weights import official as official_mod


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real checkpoint of the tiny architecture, SAM2's format."""
    model = build_model("surgseg_tiny", device="cpu", seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_finetuned.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def fake_official(tiny_ckpt, monkeypatch):
    """Make 'sam2.1_hiera_tiny' point at the tiny architecture and size so
    the official-checkpoint code paths run on a small real file."""
    ck = dataclasses.replace(
        OFFICIAL["sam2.1_hiera_tiny"], config="surgseg_tiny", approx_mb=tiny_ckpt.stat().st_size / 1e6
    )
    monkeypatch.setitem(official_mod.OFFICIAL, ck.name, ck)
    return ck


def test_list_shows_official_checkpoints_missing(wdir):
    entries = {e.name: e for e in list_weights()}
    assert {"sam2.1_hiera_tiny", "sam2.1_hiera_large", "sam2_hiera_small"} <= set(entries)
    e = entries["sam2.1_hiera_tiny"]
    assert not e.present and e.source == "official"
    assert e.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    assert entries["sam2_hiera_large"].url.endswith("/072824/sam2_hiera_large.pt")


def test_register_list_resolve_custom(wdir, tiny_ckpt):
    entry = register_checkpoint(tiny_ckpt, name="pit-f2pa", method="f2paseg", base="sam2.1_hiera_tiny", metrics={"mDice": 0.5})
    assert entry.sha256 == _sha(tiny_ckpt)
    assert entry.config == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert [e.name for e in list_weights(method="f2paseg")] == ["pit-f2pa"]
    assert resolve_weights("pit-f2pa") == tiny_ckpt.resolve()
    data = json.loads((wdir / "registry.json").read_text())
    assert data["entries"]["pit-f2pa"]["metrics"] == {"mDice": 0.5}
    with pytest.raises(WeightsError, match="official checkpoint"):
        register_checkpoint(tiny_ckpt, name="sam2.1_hiera_large")
    with pytest.raises(WeightsError, match="no such file"):
        register_checkpoint(tiny_ckpt.parent / "nope.pt")


def test_import_custom_then_verify_detects_corruption(wdir, tiny_ckpt, capsys):
    entry = import_checkpoint(tiny_ckpt, name="mine", method="sam2")
    assert Path(entry.path).parent == wdir / "custom" and Path(entry.path).read_bytes() == tiny_ckpt.read_bytes()
    assert [r.ok for r in verify_weights("mine")] == [True]
    Path(entry.path).write_bytes(b"garbage")
    (result,) = verify_weights("mine")
    assert not result.ok and "HASH MISMATCH" in result.message
    assert cli(["weights", "verify", "mine"]) == 1
    assert "BAD" in capsys.readouterr().out


def test_import_official_checks_size_keys_then_records_hash(wdir, tiny_ckpt, fake_official, tmp_path):
    entry = import_checkpoint(tiny_ckpt, name="sam2.1_hiera_tiny")
    assert entry.present and entry.sha256 == _sha(tiny_ckpt) and entry.source == "official"
    assert resolve_weights("sam2.1_hiera_tiny") == wdir / "sam2.1_hiera_tiny.pt"
    # a different file under the official name: its hash is now known
    other = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_model("surgseg_tiny", device="cpu", seed=2).state_dict()}, other)
    with pytest.raises(WeightsError, match="sha256"):
        import_checkpoint(other)
    # wrong size before any hash is known
    (wdir / "registry.json").unlink()
    small = tmp_path / "small.pt"
    torch.save({"model": {}}, small)
    with pytest.raises(WeightsError, match="MB but the official"):
        import_checkpoint(small, name="sam2.1_hiera_tiny")


def test_missing_official_names_url_and_import_command(wdir):
    with pytest.raises(WeightsError) as err:
        resolve_weights("sam2.1_hiera_small")
    msg = str(err.value)
    assert "sam2.1_hiera_small.pt" in msg and OFFICIAL["sam2.1_hiera_small"].url in msg
    assert "surgseg weights import" in msg
    with pytest.raises(WeightsError, match="no checkpoint file or registered weights"):
        resolve_weights("nonexistent-model")


def test_load_errors_are_weights_errors(tmp_path, tiny_ckpt):
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(tiny_ckpt.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_state_dict_file(truncated)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):  # weights_only refuses objects
        load_state_dict_file(pickled)
    wrong = tmp_path / "wrong.pt"
    state = torch.load(tiny_ckpt, weights_only=True)["model"]
    state.pop("no_mem_embed")
    state["extra.weight"] = torch.zeros(2)
    torch.save({"model": state}, wrong)
    with pytest.raises(WeightsError) as err:
        build_model("surgseg_tiny", checkpoint=wrong, device="cpu")
    assert "surgseg_tiny" in str(err.value) and "no_mem_embed" in str(err.value) and "extra.weight" in str(err.value)


def test_build_model_loads_pt_and_safetensors_with_provenance(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    model = build_model("surgseg_tiny", checkpoint=tiny_ckpt, device="cpu")
    ref = torch.load(tiny_ckpt, weights_only=True)["model"]
    assert torch.equal(model.state_dict()["no_mem_embed"], ref["no_mem_embed"])
    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(st))
    model2 = build_model("surgseg_tiny", checkpoint=st, device="cpu")
    assert torch.equal(model2.state_dict()["no_mem_embed"], ref["no_mem_embed"])
    from surgseg_core.sam2_engine.provenance import model_identity

    ident = model_identity(model)
    assert ident["checkpoint_sha256"] == _sha(tiny_ckpt) and ident["config"] == "surgseg_tiny"


@pytest.fixture
def http_server(tiny_ckpt):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_ckpt.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_from_local_server_records_hash(wdir, tiny_ckpt, fake_official, http_server):
    entry = download_weights("sam2.1_hiera_tiny", url=f"{http_server}/{tiny_ckpt.name}")
    assert entry.present and entry.sha256 == _sha(tiny_ckpt)
    assert sorted(p.name for p in wdir.iterdir()) == ["registry.json", "sam2.1_hiera_tiny.pt"]
    assert [r.ok for r in verify_weights("sam2.1_hiera_tiny")] == [True]
    with pytest.raises(WeightsError, match="surgseg weights import"):
        download_weights("sam2.1_hiera_tiny", url=f"{http_server}/missing.pt")
    with pytest.raises(WeightsError, match="unknown official checkpoint"):
        download_weights("sam3_giant")


def test_cli_list_import_json(wdir, tiny_ckpt, capsys):
    assert cli(["weights", "import", str(tiny_ckpt), "--name", "cli-model", "--method", "rpsam2"]) == 0
    assert "imported cli-model" in capsys.readouterr().out
    assert cli(["weights", "list", "--json", "--method", "rpsam2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["present"]) for r in rows] == [("cli-model", True)]
    assert cli(["weights", "import", str(wdir / "nothing.pt")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["weights", "--help"])
    assert "surgseg weights import" in capsys.readouterr().out
