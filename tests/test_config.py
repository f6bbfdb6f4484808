"""YAML configs and --set overrides."""
from __future__ import annotations

import pytest

from surgseg_core.config import load_config, merge_config, parse_override, parse_overrides, save_config
from surgseg_core.errors import ConfigError


def test_override_values_are_typed():
    assert parse_override("lr=1e-4") == ("lr", pytest.approx(1e-4))
    assert parse_override("epochs=3") == ("epochs", 3)
    assert parse_override("device=cpu") == ("device", "cpu")
    assert parse_override("scheduler=none") == ("scheduler", "none")
    assert parse_override("grad_clip=null") == ("grad_clip", None)
    assert parse_override("size=[64, 32]") == ("size", [64, 32])
    assert parse_override("amp=true") == ("amp", True)
    assert parse_override("data_root=/a/b=c") == ("data_root", "/a/b=c")
    assert parse_overrides(["lr=0.1", "lr=0.2"]) == {"lr": 0.2}


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_merge_order_and_round_trip(tmp_path):
    defaults = {"lr": 1e-3, "epochs": 10, "device": "auto"}
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.01\nepochs: 5\n")
    cfg = merge_config(defaults, load_config(path), parse_overrides(["epochs=2"]))
    assert cfg == {"lr": 0.01, "epochs": 2, "device": "auto"}
    save_config(tmp_path / "out.yaml", {**cfg, "root": tmp_path})
    back = load_config(tmp_path / "out.yaml")
    assert back["root"] == str(tmp_path) and back["epochs"] == 2
    assert load_config(None) == {}
