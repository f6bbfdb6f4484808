"""Unknown config keys and mistyped values are errors naming the fix, not
silently ignored (a typo would otherwise train with the default)."""
import pytest

from surgseg_core.config import check_config
from surgseg_core.errors import ConfigError
from surgseg_core.training.method import get_method
from surgseg_core.training.trainer import resolve_config

DEFAULTS = {"epochs": 10, "lr": 1e-3, "batch_size": 4, "freeze": ["image_encoder"], "amp": False,
            "layer_decay": None, "device": "auto"}


def test_a_typo_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key: 'epoch' \(did you mean 'epochs'\?\)"):
        check_config({"epoch": 3}, DEFAULTS)
    with pytest.raises(ConfigError, match="'learning_rate'"):
        check_config({"learning_rate": 1e-4, "epochs": 2}, DEFAULTS)


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
    ("lr", "fast", "lr must be a number"),
    ("amp", "yes", "amp must be true or false"),
    ("freeze", "image_encoder", r"freeze must be a list \(e.g. freeze=\[a, b\]\)"),
    ("epochs", True, "epochs must be an integer"),
])
def test_values_must_fit_the_type_of_their_default(key, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config({key: value}, DEFAULTS)


def test_fitting_values_pass_and_whole_floats_become_ints():
    out = check_config({"epochs": 3.0, "lr": 1, "layer_decay": 0.9, "device": "cpu", "freeze": None}, DEFAULTS)
    assert out == {"epochs": 3, "lr": 1.0, "layer_decay": 0.9, "device": "cpu", "freeze": None}
    assert isinstance(out["epochs"], int) and isinstance(out["lr"], float)


def test_the_trainer_refuses_a_typo_in_a_methods_config():
    spec = get_method("liver")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        resolve_config(spec, {"epoch": 3})
    # a resumed run's saved config is the base, not checked again; the user's layer is
    cfg = resolve_config(spec, {"epochs": 2}, base={"epochs": 5, "lr": 0.5})
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.5


@pytest.mark.parametrize("method,key,value,message", [
    ("liver", "lr", -1, r"lr must be >= 0, got -1"),
    ("liver", "input_width", 0, "input_width must be > 0, got 0"),
    ("liver", "weight_decay", -0.1, "weight_decay must be >= 0"),
    ("sam2", "prob_box", 2, "prob_box must be between 0 and 1"),
    ("sam2", "lr_by_module", {"sam.image_encoder": -1e-5}, "learning rate of 'sam.image_encoder' must be a number >= 0"),
])
def test_values_outside_their_range_are_refused_before_training(method, key, value, message):
    """lr=-1 or input_width=0 reached the optimizer / model builder and ended in a traceback."""
    with pytest.raises(ConfigError, match=message):
        resolve_config(get_method(method), {key: value})


def test_every_methods_defaults_are_inside_the_ranges():
    from surgseg_core.training.method import available_methods

    for name in available_methods():
        spec = get_method(name)
        resolve_config(spec, dict(spec.default_config))  # no ConfigError
