"""What a method plugs into the trainer and the CLI.

A method supplies its model, datasets, loss and metrics; the trainer supplies
device, precision, optimiser, schedule, checkpoints, logging and DDP. Methods
register a :class:`MethodSpec` under a name (``liver``, ``f2paseg``, ...).
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ..errors import ConfigError

Batch = Dict[str, Any]

#: what a method's results are (``MethodSpec.result_kind``)
RESULT_KINDS = ("masks", "objects", "curves", "points")


def _default_forward(model: torch.nn.Module, batch: Batch) -> Any:
    return model(batch["image"])


@dataclass
class MethodSpec:
    """Everything the shared trainer needs from one method.

    build_model(config) -> nn.Module
    build_datasets(config) -> (train_dataset, val_dataset or None); items are
        dicts of tensors/numbers that the default collate can stack.
    loss(outputs, batch, config) -> scalar tensor
    metrics(outputs, batch, config) -> {name: float} for one batch; the trainer
        averages them over the validation set (weighted by batch size) and
        reduces across ranks.
    forward(model, batch) -> outputs (default: ``model(batch["image"])``).
        Under DDP ``model`` is the DistributedDataParallel wrapper: call it
        (``model(...)``) rather than its submodules so gradients are synced.
    param_groups(model, config) -> list of optimizer param-group dicts or None
        (None: the trainer builds decay/no-decay groups itself)
    default_config: the method's defaults, merged under the user's YAML/CLI.
    monitor: the validation metric used for best-checkpoint selection and
        early stopping, and whether larger is better.
    Validation metrics are logged with a ``val_`` prefix (``dice`` ->
    ``val_dice``; ``val_loss`` is always there), so ``monitor`` names the
    prefixed key.
    layer_id(param_name, num_layers) -> int: depth used for layer-wise LR
        decay (optional; default: numbered ``blocks.N``/``layers.N`` of a
        backbone, see ``optim.default_layer_id``).
    predict(model, inputs, out_dir, config, *, progress=None, cancel=None)
        -> list of written paths. ``inputs``: list of video files or frame
        folders; called by ``surgseg predict`` with the checkpoint's weights
        loaded into ``model`` (eval mode, on the device).
    evaluate(model, data, config, *, progress=None, cancel=None)
        -> {metric: float}. ``data``: a dataset folder; called by
        ``surgseg evaluate``. Without it the CLI evaluates the validation
        split of ``build_datasets`` with ``data_root=data`` using ``metrics``.
    What the method's results are, for widgets, the CLI and exports (so
    none of them keeps a list of method names):
    class_names: {label value: name} of the classes it predicts (0 is
        background and not listed; empty: objects numbered by the user).
    class_colours: {label value: (r, g, b) 0-255} to draw them with.
    result_kind: one of :data:`RESULT_KINDS`: "masks" (a class label map
        per frame), "objects" (label maps of tracked object ids), "curves"
        (a label map plus polylines per class), "points" (landmarks).
    rasterize_curves(curves, (H, W), thickness) -> (H, W) mask: how
        corrected curves ({class: [(K, 2) x, y polylines]}) become a training
        mask when a corrections export has curves but no labels (None: the
        method learns from label maps only).
    train_two_stage(stage1_cfg, stage2_cfg, run_dir, *, resume, progress,
        cancel) -> (stage-1 result, stage-2 result or None): the method's
        two-stage recipe (``surgseg train --fine-tune-config``); None: none.
    stages(config, run_dir) -> list of ``training.stages.Stage`` or None:
        the method's multi-stage recipe that ``surgseg train`` runs with
        ``train_stages`` (None: one ordinary run), e.g. coarse then refine.
    Config keys the trainer reads besides its own: ``data_root`` (training
    data folder) and ``val_root`` (validation folder, optional), by
    convention; ``build_datasets`` interprets them.
    """

    name: str
    build_model: Callable[[Mapping[str, Any]], torch.nn.Module]
    build_datasets: Callable[[Mapping[str, Any]], Tuple[Any, Optional[Any]]]
    loss: Callable[[Any, Batch, Mapping[str, Any]], torch.Tensor]
    metrics: Callable[[Any, Batch, Mapping[str, Any]], Dict[str, float]]
    forward: Callable[[torch.nn.Module, Batch], Any] = _default_forward
    param_groups: Optional[Callable[[torch.nn.Module, Mapping[str, Any]], Optional[list]]] = None
    default_config: Dict[str, Any] = field(default_factory=dict)
    monitor: str = "val_loss"
    monitor_mode: str = "min"  # "min" or "max"
    collate_fn: Optional[Callable] = None
    predict: Optional[Callable[..., Any]] = None
    evaluate: Optional[Callable[..., Any]] = None
    description: str = ""
    layer_id: Optional[Callable[[str, int], int]] = None
    # config key that names the weights to start from (the Train widget's
    # "Base weights"): a training checkpoint for most methods, the SAM2
    # checkpoint being fine-tuned for "sam2"
    base_weights_key: str = "init_weights"
    class_names: Dict[int, str] = field(default_factory=dict)
    class_colours: Dict[int, Tuple[int, int, int]] = field(default_factory=dict)
    result_kind: str = "masks"
    rasterize_curves: Optional[Callable[..., Any]] = None
    train_two_stage: Optional[Callable[..., Any]] = None
    stages: Optional[Callable[[Mapping[str, Any], Any], Optional[list]]] = None

    def __post_init__(self) -> None:
        if self.result_kind not in RESULT_KINDS:
            raise ConfigError(f"method {self.name!r}: result_kind must be one of {', '.join(RESULT_KINDS)}, "
                              f"got {self.result_kind!r}")


_REGISTRY: Dict[str, MethodSpec] = {}

# Methods that ship with the package, imported on first lookup so that
# importing surgseg_core stays cheap.
_BUILTIN_MODULES = {
    "liver": "surgseg_core.methods.liver.spec",
    "sam2": "surgseg_core.methods.sam2.spec",
    "rpsam2": "surgseg_core.methods.rpsam2.spec",
    "f2paseg": "surgseg_core.methods.f2paseg.train",
    "tools": "surgseg_core.methods.tools.spec",
}


_ORIGIN: Dict[str, str] = {}


def register_method(spec: MethodSpec, module: Optional[str] = None) -> MethodSpec:
    """Register ``spec``; ``module`` (default: the caller's module) is what a
    child process imports to find it again (see :func:`method_reference`)."""
    _REGISTRY[spec.name] = spec
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__")
    if module and module != "__main__":
        _ORIGIN[spec.name] = module
    return spec


def method_reference(name: str) -> str:
    """A string that finds the method in a fresh process: the name for
    built-in methods, ``"module:name"`` for methods registered elsewhere."""
    if ":" in name or name in _BUILTIN_MODULES or name not in _ORIGIN:
        return name
    return f"{_ORIGIN[name]}:{name}"


def get_method(name: str) -> MethodSpec:
    """Look a method up by name. ``"package.module:name"`` imports that
    module first (so third-party methods need no entry here)."""
    if ":" in name:
        module_name, _, name = name.partition(":")
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import method module {module_name!r}: {exc}") from None
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        try:
            importlib.import_module(_BUILTIN_MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name != _BUILTIN_MODULES[name]:
                raise
            raise ConfigError(f"method {name!r} is not available in this installation ({exc.name} missing)") from None
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(known) or 'none'}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
