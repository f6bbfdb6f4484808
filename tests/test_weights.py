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
        OFFICIAL["sam2.1_hiera_tiny"], config="surgseg_tiny", approx_mb=tiny_ckpt.stat().st_size / 1e6,
        arch=TINY_ARCH, sha256=None,  # no published hash: trust on first use
    )
    monkeypatch.setitem(official_mod.OFFICIAL, ck.name, ck)
    return ck


TINY_ARCH = (16, 5, True)  # surgseg_tiny: Hiera width 16, stages [1, 1, 2, 1], SAM 2.1 keys


@pytest.fixture
def pinned_official(tiny_ckpt, monkeypatch):
    """'sam2.1_hiera_tiny' with a published hash: that of the tiny file."""
    ck = dataclasses.replace(
        OFFICIAL["sam2.1_hiera_tiny"], config="surgseg_tiny", approx_mb=tiny_ckpt.stat().st_size / 1e6,
        arch=TINY_ARCH, sha256=_sha(tiny_ckpt),
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
    assert [e.name for e in list_weights(method="f2paseg") if e.source != "bundled"] == ["pit-f2pa"]
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
    assert [(r["name"], r["present"]) for r in rows if r.get("source") != "bundled"] == [("cli-model", True)]
    assert cli(["weights", "import", str(wdir / "nothing.pt")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["weights", "--help"])
    assert "surgseg weights import" in capsys.readouterr().out


# ------------------------------------------------------------ pinned hashes
def test_sam21_hashes_are_pinned():
    assert OFFICIAL["sam2.1_hiera_tiny"].sha256 == "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"
    assert OFFICIAL["sam2.1_hiera_large"].sha256 == "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"
    assert all(OFFICIAL[n].sha256 for n in OFFICIAL if n.startswith("sam2.1_"))
    assert not any(OFFICIAL[n].sha256 for n in OFFICIAL if n.startswith("sam2_"))


def test_arch_of_the_tiny_state(tiny_ckpt):
    assert official_mod.state_arch(load_state_dict_file(tiny_ckpt)) == TINY_ARCH
    assert official_mod.official_with_arch((96, 12, True)) == ["sam2.1_hiera_tiny"]


def test_pinned_hash_accepts_right_bytes_and_refuses_a_changed_byte(wdir, tiny_ckpt, pinned_official, tmp_path):
    entry = import_checkpoint(tiny_ckpt, name="sam2.1_hiera_tiny")
    assert entry.present and entry.sha256 == _sha(tiny_ckpt)
    data = bytearray(tiny_ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the weights
    changed = tmp_path / "sam2.1_hiera_tiny.pt"
    changed.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="is not the official sam2.1_hiera_tiny checkpoint: sha256 .* != published"):
        import_checkpoint(changed)
    # the pinned hash wins over whatever was recorded before
    registry = json.loads((wdir / "registry.json").read_text())
    registry["entries"]["sam2.1_hiera_tiny"]["sha256"] = _sha(changed)
    (wdir / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(WeightsError, match="published"):
        import_checkpoint(changed)
    (result,) = verify_weights("sam2.1_hiera_tiny")
    assert result.ok  # the good copy in the cache


def test_mismatch_tells_wrong_file_from_damaged_copy(wdir, tiny_ckpt, pinned_official, tmp_path):
    def refused(state_or_bytes) -> str:
        path = tmp_path / "sam2.1_hiera_tiny.pt"
        if isinstance(state_or_bytes, bytes):
            path.write_bytes(state_or_bytes)
        else:
            torch.save({"model": state_or_bytes}, path)
        with pytest.raises(WeightsError) as err:
            import_checkpoint(path)
        return str(err.value)

    # same architecture and keys, other values: a modified (e.g. fine-tuned) copy
    other = build_model("surgseg_tiny", device="cpu", seed=2).state_dict()
    assert "damaged or modified copy" in refused(other)
    # cut short: damaged
    assert "damaged or incomplete" in refused(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    # not SAM2 at all: wrong file
    msg = refused({"encoder.conv.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)})
    assert "wrong file: it is not a SAM2 checkpoint" in msg and "encoder" in msg
    # SAM2, but another model (a wider Hiera; 96 wide, 12 blocks = the official tiny)
    state = load_state_dict_file(tiny_ckpt)
    state["image_encoder.trunk.patch_embed.proj.weight"] = torch.zeros(96, 3, 7, 7)
    state = {k: v for k, v in state.items() if not k.startswith("image_encoder.trunk.blocks.")}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(96) for i in range(12)})
    msg = refused(state)
    assert "wrong file: a SAM2 checkpoint of another model" in msg and "sam2.1_hiera_tiny" in msg


def test_download_verifies_the_pinned_hash(wdir, tiny_ckpt, pinned_official, http_server, monkeypatch):
    entry = download_weights("sam2.1_hiera_tiny", url=f"{http_server}/{tiny_ckpt.name}")
    assert entry.present and entry.sha256 == _sha(tiny_ckpt)
    (wdir / "sam2.1_hiera_tiny.pt").unlink()
    monkeypatch.setitem(official_mod.OFFICIAL, "sam2.1_hiera_tiny",
                        dataclasses.replace(pinned_official, sha256="0" * 64))
    with pytest.raises(WeightsError, match="!= published 0000"):
        download_weights("sam2.1_hiera_tiny", url=f"{http_server}/{tiny_ckpt.name}")
    assert not (wdir / "sam2.1_hiera_tiny.pt").exists()
    assert not [p for p in wdir.iterdir() if p.name.startswith(".download")]


# ------------------------------------------------------------------ variants
class _Extra(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)


def _add_extra(model, width: int = 4):
    model.sam_mask_decoder.extra = _Extra(width)


def _widen_no_mem(model):
    model.no_mem_embed = torch.nn.Parameter(torch.zeros(1, 1, model.hidden_dim + 1))


@pytest.fixture
def variants(monkeypatch):
    from surgseg_core.sam2_engine import variants as vmod

    monkeypatch.setattr(vmod, "_REGISTRY", dict(vmod._REGISTRY))
    vmod.register_variant(vmod.Variant("extra", _add_extra, new_keys=("sam_mask_decoder.extra",)))
    vmod.register_variant(vmod.Variant("widened", _widen_no_mem, new_keys=("sam_mask_decoder.extra",)))
    return vmod


def test_variant_loads_official_weights_and_reports_exactly_the_new_keys(wdir, tiny_ckpt, variants, tmp_path):
    model = build_model("surgseg_tiny", checkpoint=tiny_ckpt, variant="extra", device="cpu")
    assert model.surgseg_load_report.new_keys == ["sam_mask_decoder.extra.proj.weight", "sam_mask_decoder.extra.proj.bias"]
    ref = load_state_dict_file(tiny_ckpt)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.items())
    from surgseg_core.sam2_engine.provenance import model_identity

    ident = model_identity(model)
    assert ident["variant"].endswith("extra") and ident["new_parameters"] == model.surgseg_load_report.new_keys
    # anything else is refused: a missing key outside the variant's new modules ...
    lacking = tmp_path / "lacking.pt"
    torch.save({"model": {k: v for k, v in ref.items() if k != "no_mem_embed"}}, lacking)
    with pytest.raises(WeightsError, match=r"with variant 'extra'.*1 missing \(first: no_mem_embed\)"):
        build_model("surgseg_tiny", checkpoint=lacking, variant="extra", device="cpu")
    # ... a shape the variant changed ...
    with pytest.raises(WeightsError, match="shape mismatch.*no_mem_embed"):
        build_model("surgseg_tiny", checkpoint=tiny_ckpt, variant="widened", device="cpu")
    # ... and an explicit empty list allows nothing
    with pytest.raises(WeightsError, match="2 missing"):
        build_model("surgseg_tiny", checkpoint=tiny_ckpt, variant="extra", missing_ok=[], device="cpu")
    # the variant's own weights load exactly once registered as that variant; into plain SAM2 they are refused
    saved = tmp_path / "extra_tuned.pt"
    torch.save({"model": own}, saved)
    register_checkpoint(saved, name="tuned-extra", method="sam2", variant="extra", config="surgseg_tiny")
    again = build_model("surgseg_tiny", checkpoint="tuned-extra", variant="extra", device="cpu")
    assert again.surgseg_load_report.new_keys == [] and again.surgseg_model_name == "tuned-extra"
    with pytest.raises(WeightsError, match="2 unexpected"):
        build_model("surgseg_tiny", checkpoint="tuned-extra", device="cpu")
    # the registry entry alone builds the right model (what surgseg track and the widget do)
    from surgseg_core.sam2_engine.track import load_tracking_model, resolve_model_choice

    assert resolve_model_choice("tuned-extra") == ("surgseg_tiny", "tuned-extra", "extra")
    net = load_tracking_model("tuned-extra")
    assert isinstance(net.sam_mask_decoder.extra, _Extra)
    assert [e.name for e in list_weights(variant="extra")] == ["tuned-extra"]
    from surgseg_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown SAM2 model variant 'nope'"):
        build_model("surgseg_tiny", variant="nope", device="cpu")


def test_training_loader_is_exact_too(tiny_ckpt, variants):
    from surgseg_core.training.checkpoint import load_model_weights

    model = build_model("surgseg_tiny", variant="extra", device="cpu")
    with pytest.raises(WeightsError, match="do not fit this model: 2 missing"):
        load_model_weights(tiny_ckpt, model)
    load_model_weights(tiny_ckpt, model, missing_ok=["sam_mask_decoder.extra.*"])
    ref = load_state_dict_file(tiny_ckpt)
    assert torch.equal(model.state_dict()["no_mem_embed"], ref["no_mem_embed"])


def test_trained_model_loads_from_its_registered_name(wdir, tmp_path):
    """``surgseg predict/evaluate`` take a registered name as well as a path;
    the registry's method must match."""
    import _toy_method
    from surgseg_core.errors import ConfigError
    from surgseg_core.training.checkpoint import save_checkpoint
    from surgseg_core.training.inference import load_trained_model

    net = _toy_method.build_model({"width": 4})
    path = save_checkpoint(tmp_path / "toy.pt", {"model": net.state_dict(), "method": "toy", "config": {"width": 4}})
    register_checkpoint(path, name="toy-best", method="toy")
    spec, model, cfg, dev = load_trained_model("toy", "toy-best", {"device": "cpu"})
    assert cfg["checkpoint"] == str(path.resolve()) and dev.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
    register_checkpoint(path, name="not-toy", method="liver")
    with pytest.raises(ConfigError, match="for method 'liver', not 'toy'"):
        load_trained_model("toy", "not-toy")


def test_bundled_method_weights_load_by_name_from_safetensors(wdir, tmp_path, monkeypatch):
    """Demo weights of any method ship as safetensors in a sample_data
    folder with weights.json: the export keeps the checkpoint's method and
    config, the registry lists every such folder (its variant too), and
    ``load_trained_model`` builds the model from the name alone."""
    import json

    import _toy_method
    from surgseg_core.methods.demo_weights import export_checkpoint, write_weights_json
    from surgseg_core.training.checkpoint import save_checkpoint
    from surgseg_core.training.inference import load_trained_model
    from surgseg_core.weights import get_entry

    net = _toy_method.build_model({"width": 3})
    pt = save_checkpoint(tmp_path / "toy.pt", {"model": net.state_dict(), "method": "toy", "config": {"width": 3},
                                               "optimizer": {"state": {}}, "epoch": 4})
    root = tmp_path / "sample_data"
    target = export_checkpoint(pt, root / "toy_demo" / "toy-demo.safetensors")
    write_weights_json(target.parent, name="toy-demo", weights=target, method="toy", metrics={"dice": 0.5},
                       variant="fancy")
    monkeypatch.setenv("SURGSEG_SAMPLE_DATA", str(root))
    entry = get_entry("toy-demo")
    assert entry.source == "bundled" and entry.variant == "fancy" and entry.metrics == {"dice": 0.5}
    _, model, cfg, _ = load_trained_model("toy", "toy-demo", {"device": "cpu"})
    assert cfg["width"] == 3  # the config travelled inside the safetensors file
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))
    # a byte changed after export: the pinned sha256 refuses the file
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256|changed|SHA"):
        load_trained_model("toy", "toy-demo", {"device": "cpu"})
    assert json.loads((target.parent / "weights.json").read_text())["method"] == "toy"


def test_import_never_writes_outside_the_cache_or_replaces_good_weights(wdir, tiny_ckpt, tmp_path, capsys):
    """Names are checked and files read before anything is copied; a
    registered name is replaced only with --force (issue 15: data loss)."""
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    for bad in ("../../x", "/tmp/abs", "a/b", ".hidden"):
        assert cli(["weights", "import", str(tiny_ckpt), "--name", bad]) != 0
        assert "invalid weights name" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written anywhere

    good = import_checkpoint(tiny_ckpt, name="mine", method="sam2")
    good_bytes = Path(good.path).read_bytes()
    empty, noise = tmp_path / "empty.pt", tmp_path / "noise.pt"
    empty.write_bytes(b"")
    noise.write_bytes(bytes(range(256)) * 8)
    liver_like = tmp_path / "liver_like.pt"
    torch.save({"method": "liver", "model": {"encoder.w": torch.zeros(2)}}, liver_like)
    not_sam2 = tmp_path / "not_sam2.pt"
    torch.save({"conv.weight": torch.zeros(2)}, not_sam2)
    for path, message in ((empty, "cannot read checkpoint"), (noise, "cannot read checkpoint"),
                          (liver_like, "trained with method 'liver'"), (not_sam2, "no image_encoder")):
        with pytest.raises(WeightsError, match=message):
            import_checkpoint(path, name="other", method="sam2")
    with pytest.raises(WeightsError, match="already registered.*--force"):
        import_checkpoint(tiny_ckpt, name="mine", method="sam2")
    assert Path(good.path).read_bytes() == good_bytes
    assert not (wdir / "custom" / "other.pt").exists()
    replaced = import_checkpoint(tiny_ckpt, name="mine", method="sam2", force=True)
    assert replaced.sha256 == good.sha256
    # a liver checkpoint imports as liver weights
    assert import_checkpoint(liver_like, name="liv", method="liver").method == "liver"


def test_weights_changed_after_import_are_refused_on_use(wdir, tiny_ckpt):
    """A registered file whose bytes changed is hashed again on use and
    refused (provenance recorded the stale hash); unchanged files are hashed
    once, then recognised by size and modification time."""
    from surgseg_core.weights import resolve_weights
    from surgseg_core.weights import store

    entry = import_checkpoint(tiny_ckpt, name="mine", method="sam2")
    assert resolve_weights("mine") == Path(entry.path)
    stamps = json.loads((wdir / store._STAMPS).read_text())
    assert stamps[str(Path(entry.path).resolve())][2] == entry.sha256
    calls = []
    real = store.sha256_file
    store.sha256_file = lambda p: calls.append(p) or real(p)
    try:
        resolve_weights("mine")
        assert calls == []  # unchanged: not hashed again
        raw = bytearray(Path(entry.path).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        Path(entry.path).write_bytes(bytes(raw))
        with pytest.raises(WeightsError, match="changed since they were registered"):
            resolve_weights("mine")
        assert len(calls) == 1
    finally:
        store.sha256_file = real


def test_exported_safetensors_are_byte_reproducible(tmp_path):
    """The same weights exported twice (fresh processes: safetensors orders
    a metadata dict by a per-process hash) give the same bytes, so a
    re-export keeps the registered SHA-256; the fields read back."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from surgseg_core.weights.state_dict import write_safetensors\n"
        "g = torch.Generator().manual_seed(0)\n"
        "state = {f'layer{i}.weight': torch.randn(4, 3, generator=g) for i in range(5)}\n"
        "write_safetensors(state, sys.argv[1], 'surgseg', {'config': 'c', 'method': 'm', 'variant': 'v', 'x': 1})\n"
    )
    outs = [tmp_path / f"w{i}.safetensors" for i in range(3)]
    for out in outs:
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=120)
    blobs = {out.read_bytes() for out in outs}
    assert len(blobs) == 1
    from safetensors import safe_open

    with safe_open(str(outs[0]), framework="pt") as f:
        assert json.loads(f.metadata()["surgseg"]) == {"config": "c", "method": "m", "variant": "v", "x": 1}
