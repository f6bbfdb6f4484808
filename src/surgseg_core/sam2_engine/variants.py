"""SAM2 model variants: registered builders that change a SAM2 model after
it is instantiated (a replaced mask decoder, added modules), so methods
built on SAM2 (F2PASeg's fusion decoder, RP-SAM2's shift block) load the
official weights into their model and fine-tune from there.

    def add_fusion(model, rank=8):
        model.sam_mask_decoder = FusionDecoder(model.sam_mask_decoder, rank)

    register_variant(Variant("f2paseg", add_fusion, new_keys=("sam_mask_decoder.fusion",)))
    model = build_model("sam2.1_hiera_tiny", "sam2.1_hiera_tiny", variant="f2paseg")
    model.surgseg_load_report.new_keys   # the fusion parameters, left at their init

``new_keys`` (globs or module prefixes) are the parameters the variant
adds: the only keys that official (or plain SAM2) weights may lack when
loaded into it. Every other mismatch is still refused (see
``weights.state_dict``); weights saved from the variant itself load
exactly.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    apply: Callable[..., Any]  # apply(model, **options) -> None (in place) or the new model
    new_keys: Tuple[str, ...] = ()
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)  # options of ``apply``


_REGISTRY: Dict[str, Variant] = {}
_ORIGIN: Dict[str, str] = {}
# variants that ship with the package, imported on first lookup
_BUILTIN_MODULES: Dict[str, str] = {"f2paseg": "surgseg_core.methods.f2paseg.model"}


def register_variant(variant: Variant, module: Optional[str] = None) -> Variant:
    """Register ``variant``; ``module`` (default: the caller's module) is what
    a child process imports to find it again (``"module:name"``)."""
    if not variant.name or ":" in variant.name:
        raise ConfigError(f"invalid variant name {variant.name!r}")
    _REGISTRY[variant.name] = variant
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__")
    if module and module != "__main__":
        _ORIGIN[variant.name] = module
    return variant


def variant_reference(name: str) -> str:
    """A string that finds the variant in a fresh process (for registries and provenance)."""
    if ":" in name or name in _BUILTIN_MODULES or name not in _ORIGIN:
        return name
    return f"{_ORIGIN[name]}:{name}"


def get_variant(name: str) -> Variant:
    """Look a variant up by name; ``"package.module:name"`` imports the module first."""
    if ":" in name:
        module_name, _, name = name.partition(":")
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import SAM2 variant module {module_name!r}: {exc}") from None
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
        raise ConfigError(f"unknown SAM2 model variant {name!r}; available: {', '.join(known) or 'none'}")
    return _REGISTRY[name]


def available_variants() -> list:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def apply_variant(model, name: str, options: Optional[Mapping[str, Any]] = None):
    """The model changed by variant ``name`` (its ``apply`` with the
    variant's defaults under ``options``)."""
    variant = get_variant(name)
    opts = {**dict(variant.defaults), **dict(options or {})}
    try:
        inspect.signature(variant.apply).bind(model, **opts)
    except TypeError as exc:
        raise ConfigError(f"SAM2 variant {variant.name!r}: bad options {opts}: {exc}") from None
    out = variant.apply(model, **opts)
    return model if out is None else out
