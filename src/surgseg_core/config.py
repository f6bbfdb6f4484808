"""YAML configuration files with command-line overrides.

A run's configuration is one flat dict (trainer keys and method keys side by
side). Layers, lowest first: the method's defaults, the trainer's defaults,
the user's YAML file, then ``--set key=value`` overrides whose values are
typed with ``yaml.safe_load`` (``--set lr=1e-4`` is a float, ``--set
epochs=3`` an int, ``--set device=cpu`` a string).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import yaml

from .atomic import atomic_write_text
from .errors import ConfigError

PathLike = Union[str, os.PathLike]


def load_config(path: Optional[PathLike]) -> Dict[str, Any]:
    """Read a YAML mapping; ``None`` gives an empty config."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, found {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"lr=1e-4"`` -> ``("lr", 1e-4)``; the value is typed by YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. --set lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    # yaml reads "1e-4" as a string (YAML 1.1 wants a dot); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key, value


def parse_overrides(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or ():
        key, value = parse_override(item)
        out[key] = value
    return out


def merge_config(*layers: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Later layers win; ``None`` layers are skipped (shallow merge: configs are flat)."""
    out: Dict[str, Any] = {}
    for layer in layers:
        if layer:
            out.update(layer)
    return out


def check_config(config: Optional[Mapping[str, Any]], defaults: Mapping[str, Any], *,
                 what: str = "config") -> Dict[str, Any]:
    """The user's config checked against the known keys and their defaults.

    Unknown keys (typos such as ``epoch`` or ``learning_rate``) are an error
    naming the closest valid key; a value whose type does not fit its
    default (``batch_size=2.5``, ``lr=fast``, ``freeze=image_encoder`` for a
    list) is an error too. Whole floats become ints where an int is expected
    (``epochs=3.0``). ``None`` is accepted for every key (it means "off" or
    "the default" to the code that reads it). Returns the config with those
    conversions.
    """
    import difflib

    out: Dict[str, Any] = {}
    unknown = [k for k in (config or {}) if k not in defaults]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown {what} key{'s' if len(unknown) > 1 else ''}: {', '.join(hints)}; "
                          f"valid keys: {', '.join(sorted(map(str, defaults)))}")
    for key, value in (config or {}).items():
        default = defaults[key]
        out[key] = _in_range(key, _typed(key, value, default))
    return out


#: Value ranges of the training keys that have one, whatever the method (``lr=-1`` and
#: ``input_width=0`` failed later with a traceback or trained nonsense).
POSITIVE_KEYS = frozenset({
    "epochs", "batch_size", "val_batch_size", "grad_accum", "input_width", "input_height", "image_size",
    "clip_len", "val_clip_len", "max_objects", "max_stride", "max_tools", "sigma", "lora_rank", "lora_alpha", "shift_layers",
    "shift_heads", "shift_mlp_dim", "fusion_kernel_size", "box_every", "eval_seeds", "points_per_object",
    "grid_points", "encoder_depth", "k", "d_max", "huber_delta", "line_thickness", "eval_thickness",
    "match_tolerance", "dice_smooth",
})
NON_NEGATIVE_KEYS = frozenset({
    "lr", "weight_decay", "warmup_steps", "warmup_epochs", "num_workers", "log_every", "min_lr", "grad_clip",
    "early_stopping_patience", "plateau_patience", "box_jitter", "box_noise", "click_margin", "correction_points",
    "correction_frames", "min_area", "nms_radius", "keep_recent_prompt_frames", "plain_keep_recent_prompt_frames",
    "mask_alpha", "aux_weight", "video_cache_mb", "seed", "theta", "epsilon", "scale_init",
})
UNIT_INTERVAL_KEYS = frozenset({"prob_box", "prob_point", "hard_windows", "enter_windows", "layer_decay", "min_lr_ratio",
                                "plateau_factor", "ftl_alpha", "ftl_beta"})


def _in_range(key: str, value: Any) -> Any:
    if key == "lr_by_module" and isinstance(value, Mapping):
        for module, lr in value.items():
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
                raise ConfigError(f"lr_by_module: the learning rate of {module!r} must be a number >= 0, got {lr!r}")
        return value
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if key in POSITIVE_KEYS and not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")
    if key in NON_NEGATIVE_KEYS and not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if key in UNIT_INTERVAL_KEYS and not 0 <= value <= 1:
        raise ConfigError(f"{key} must be between 0 and 1, got {value!r}")
    return value


def _typed(key: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key} must be an integer, got {value!r}")
            return int(value)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list (e.g. {key}=[a, b]), got {value!r}")
    if isinstance(default, Mapping) and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping (e.g. {key}={{a: 1}}), got {value!r}")
    return value


def plain_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Config with only YAML/``weights_only``-safe values (paths become strings)."""

    def conv(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, Mapping):
            return {str(k): conv(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [conv(v) for v in value]
        if hasattr(value, "item"):  # numpy / torch scalars
            return value.item()
        return str(value)

    return {str(k): conv(v) for k, v in config.items()}


def save_config(path: PathLike, config: Mapping[str, Any]) -> Path:
    """Write the config as YAML, atomically."""
    text = yaml.safe_dump(plain_config(config), sort_keys=True)
    return atomic_write_text(path, text)
