"""AdamW parameter groups, layer-wise LR decay and LR schedules.

Groups follow the usual transformer recipe (BEiT/MAE/SAM2 training): no
weight decay on biases, norm layers and 1-d parameters; with ``layer_decay``
< 1 each backbone block's LR is scaled by ``layer_decay ** (depth - id)`` so
early layers move less than late ones. Methods may pass their own groups
(``MethodSpec.param_groups``, e.g. a lower LR for an image encoder); these
are split into decay / no-decay parts here as well.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch

from ..errors import ConfigError

_NORM_TYPES = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.LocalResponseNorm,
)
_BLOCK_TOKEN = re.compile(r"^(?:blocks|layers|stages|layer)(\d+)?$")
_EMBED_TOKEN = re.compile(r"^(?:patch_embed|pos_embed\w*|cls_token|embed|stem|conv1|bn1)$")
# Module names a backbone may sit under; numbered blocks anywhere else (memory
# attention ``layers.N``, a decoder's ``blocks.N``, a transformer's ``layers.N``)
# are heads and train at the full LR. ``module``: DDP; ``sam``: methods.sam2.
_BACKBONE_PATH = frozenset({"encoder", "image_encoder", "backbone", "trunk", "model", "module", "sam"})


def _backbone_depth(name: str):
    """("block", i) / ("embed", None) for a backbone parameter, else None."""
    tokens = name.split(".")
    for i, tok in enumerate(tokens[:-1]):
        m = _BLOCK_TOKEN.match(tok)
        if m:
            num = m.group(1)
            if num is None:
                nxt = tokens[i + 1]
                if not nxt.isdigit():
                    return None
                num = nxt
            return ("block", int(num)) if all(t in _BACKBONE_PATH for t in tokens[:i]) else None
        if _EMBED_TOKEN.match(tok):
            return ("embed", None) if all(t in _BACKBONE_PATH for t in tokens[:i]) else None
        if tok not in _BACKBONE_PATH:
            return None
    if _EMBED_TOKEN.match(tokens[-1]) and all(t in _BACKBONE_PATH for t in tokens[:-1]):
        return ("embed", None)  # a bare parameter such as trunk.pos_embed
    return None


def no_decay_names(model: torch.nn.Module) -> set:
    """Names of parameters that get no weight decay: biases, norm weights, 1-d tensors."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _NORM_TYPES) or p_name.endswith("bias") or param.ndim <= 1:
                names.add(full)
    return names


def default_layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay: backbone embeddings 0,
    backbone block i -> i+1, everything else (necks, heads, memory
    attention, decoders) num_layers + 1 (full LR). Only blocks whose module
    path is a backbone's (``encoder``, ``image_encoder.trunk``, ``backbone``,
    or the model itself) count: for SAM2 that numbers the Hiera blocks only,
    SAM2's own rule (``image_encoder.trunk.blocks.N``)."""
    found = _backbone_depth(name)
    if found is None:
        return num_layers + 1
    kind, i = found
    return 0 if kind == "embed" else min(int(i) + 1, num_layers)


def _count_layers(names: Iterable[str]) -> int:
    ids = [f[1] for n in names if (f := _backbone_depth(n)) is not None and f[0] == "block"]
    return max(ids) + 1 if ids else 0


def _module_lr(name: str, lr_by_module: Mapping[str, Any]) -> Optional[float]:
    """LR of the longest ``lr_by_module`` prefix that ``name`` falls under."""
    best, lr = -1, None
    for prefix, value in lr_by_module.items():
        p = str(prefix).rstrip(".")
        if (name == p or name.startswith(p + ".")) and len(p) > best:
            best, lr = len(p), float(value)
    return lr


def build_param_groups(
    model: torch.nn.Module,
    config: Mapping[str, Any],
    method_groups: Optional[List[Dict[str, Any]]] = None,
    layer_id: Optional[Callable[[str, int], int]] = None,
) -> List[Dict[str, Any]]:
    """AdamW groups with per-group LR, no decay on bias/norm, optional layer decay.

    ``method_groups``: list of dicts with ``params`` (parameters) and
    optionally ``lr``, ``weight_decay``, ``name``; parameters not listed there
    go into a default group with the base LR. Frozen parameters are skipped.
    ``config["lr_by_module"]``: ``{module prefix: lr}`` for parameters not in
    a method group (the longest matching prefix wins; e.g. a 10x lower LR
    for ``sam.image_encoder``); layer decay scales these too.
    """
    base_lr = float(config.get("lr", 1e-3))
    base_wd = float(config.get("weight_decay", 0.0))
    layer_decay = config.get("layer_decay")
    layer_decay = float(layer_decay) if layer_decay not in (None, "", False) else None
    if layer_decay is not None and not (0 < layer_decay <= 1):
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")

    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = no_decay_names(model)
    num_layers = int(config.get("num_layers") or _count_layers(names.values()))
    layer_id = layer_id or default_layer_id
    lr_by_module = dict(config.get("lr_by_module") or {})
    if lr_by_module:
        unknown = [p for p in lr_by_module if _module_lr_hits(p, names.values()) == 0]
        if unknown:
            raise ConfigError(f"lr_by_module: no parameters under {', '.join(map(repr, unknown))}")

    groups_in: List[Dict[str, Any]] = []
    seen: set = set()
    for i, g in enumerate(method_groups or []):
        params = [p for p in g["params"] if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups_in.append({**g, "params": params, "name": g.get("name", f"group{i}")})
    rest = [p for p in model.parameters() if id(p) not in seen]
    by_lr: Dict[Optional[float], List[torch.nn.Parameter]] = {}
    for p in rest:
        by_lr.setdefault(_module_lr(names.get(id(p), ""), lr_by_module) if lr_by_module else None, []).append(p)
    for lr, params in by_lr.items():
        if lr is None:
            groups_in.append({"params": params, "name": "default"})
        else:
            groups_in.append({"params": params, "name": f"lr{lr:g}", "lr": lr})

    out: Dict[tuple, Dict[str, Any]] = {}
    for g in groups_in:
        lr = float(g.get("lr", base_lr))
        wd = float(g.get("weight_decay", base_wd))
        for p in g["params"]:
            if not p.requires_grad:
                continue
            name = names.get(id(p), "")
            decay = 0.0 if name in no_decay else wd
            scale = 1.0
            if layer_decay is not None and layer_decay < 1 and num_layers > 0:
                scale = layer_decay ** (num_layers + 1 - layer_id(name, num_layers))
            key = (g["name"], decay, scale)
            if key not in out:
                out[key] = {
                    "params": [],
                    "lr": lr * scale,
                    "weight_decay": decay,
                    "name": f"{g['name']}/{'decay' if decay else 'no_decay'}/x{scale:.4g}",
                }
            out[key]["params"].append(p)
    if not out:
        raise ConfigError("the model has no trainable parameters (all frozen?)")
    return list(out.values())


def _module_lr_hits(prefix: str, names: Iterable[str]) -> int:
    p = str(prefix).rstrip(".")
    return sum(1 for n in names if n == p or n.startswith(p + "."))


def build_optimizer(groups: List[Dict[str, Any]], config: Mapping[str, Any]) -> torch.optim.Optimizer:
    betas = config.get("betas", (0.9, 0.999))
    return torch.optim.AdamW(groups, lr=float(config.get("lr", 1e-3)), betas=tuple(betas))


def _warmup_cosine_factor(min_ratio: float, total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 over ``warmup`` steps, then cosine to ``min_ratio``."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = min(step - warmup, total - warmup) / max(1, total - warmup)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def per_step(config: Mapping[str, Any]) -> bool:
    unit = str(config.get("schedule_unit", "epoch")).lower()
    if unit not in ("epoch", "step"):
        raise ConfigError(f"schedule_unit must be 'epoch' or 'step', got {unit!r}")
    return unit == "step"


def build_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any], steps_per_epoch: int = 1):
    """LR schedule, stepped per epoch or, with ``schedule_unit: step``, per
    optimizer step (``steps_per_epoch`` of them an epoch).

    ``cosine``: each group decays from its own LR to ``min_lr_ratio`` times
    it (when set, e.g. 0.1 for SAM2's "decay to lr/10") or else to ``min_lr``,
    after ``warmup_steps`` (per-step schedules) or ``warmup_epochs`` of
    linear warm-up; ``plateau``: multiply by ``plateau_factor`` after
    ``plateau_patience`` epochs without improvement of the monitored metric;
    ``none``.
    """
    kind = str(config.get("scheduler", "cosine")).lower()
    epochs = int(config.get("epochs", 1))
    stepwise = per_step(config)
    total = epochs * max(1, int(steps_per_epoch)) if stepwise else epochs
    warmup = int(config.get("warmup_steps" if stepwise else "warmup_epochs", 0) or 0)
    if warmup < 0 or (warmup and warmup >= total):
        raise ConfigError(f"warm-up ({warmup}) must be >= 0 and shorter than the schedule ({total} "
                          f"{'steps' if stepwise else 'epochs'})")
    if kind == "cosine":
        ratio = config.get("min_lr_ratio")
        factors = []
        for group in optimizer.param_groups:
            base = group.get("initial_lr", group["lr"])
            r = float(ratio) if ratio is not None else (float(config.get("min_lr", 0.0)) / base if base > 0 else 0.0)
            factors.append(_warmup_cosine_factor(min(max(r, 0.0), 1.0), total, warmup))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    if stepwise:
        raise ConfigError(f"schedule_unit 'step' needs scheduler 'cosine', got {kind!r}")
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=str(config.get("monitor_mode", "min")),
            factor=float(config.get("plateau_factor", 0.5)),
            patience=int(config.get("plateau_patience", 2)),
            min_lr=float(config.get("min_lr", 0.0)),
        )
    if kind in ("none", "constant", ""):
        return None
    raise ConfigError(f"scheduler must be 'cosine', 'plateau' or 'none', got {kind!r}")
