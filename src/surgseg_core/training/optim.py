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
_BLOCK_RE = re.compile(r"(?:^|\.)(?:blocks|layers|stages|layer)\.?(\d+)(?:\.|$)")
_EMBED_RE = re.compile(r"(?:^|\.)(?:patch_embed|pos_embed|cls_token|embed|stem|conv1|bn1)(?:\.|$|_)")


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
    """Depth of a parameter for layer-wise decay: embeddings 0, block i -> i+1,
    everything else (necks, heads) num_layers + 1 (full LR)."""
    match = _BLOCK_RE.search(name)
    if match:
        return min(int(match.group(1)) + 1, num_layers)
    if _EMBED_RE.search(name):
        return 0
    return num_layers + 1


def _count_layers(names: Iterable[str]) -> int:
    ids = [int(m.group(1)) for n in names if (m := _BLOCK_RE.search(n))]
    return max(ids) + 1 if ids else 0


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

    groups_in: List[Dict[str, Any]] = []
    seen: set = set()
    for i, g in enumerate(method_groups or []):
        params = [p for p in g["params"] if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups_in.append({**g, "params": params, "name": g.get("name", f"group{i}")})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups_in.append({"params": rest, "name": "default"})

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


def build_optimizer(groups: List[Dict[str, Any]], config: Mapping[str, Any]) -> torch.optim.Optimizer:
    betas = config.get("betas", (0.9, 0.999))
    return torch.optim.AdamW(groups, lr=float(config.get("lr", 1e-3)), betas=tuple(betas))


def _cosine_factor(min_ratio: float, total: int) -> Callable[[int], float]:
    def factor(epoch: int) -> float:
        t = min(epoch, total) / max(1, total)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]):
    """Per-epoch LR schedule.

    ``cosine``: each group decays from its own LR to ``min_lr_ratio`` times
    it (when set, e.g. 0.1 for SAM2's "decay to lr/10") or else to ``min_lr``;
    ``plateau``: multiply by ``plateau_factor`` after ``plateau_patience``
    epochs without improvement of the monitored metric; ``none``.
    """
    kind = str(config.get("scheduler", "cosine")).lower()
    epochs = int(config.get("epochs", 1))
    if kind == "cosine":
        ratio = config.get("min_lr_ratio")
        factors = []
        for group in optimizer.param_groups:
            base = group.get("initial_lr", group["lr"])
            r = float(ratio) if ratio is not None else (float(config.get("min_lr", 0.0)) / base if base > 0 else 0.0)
            factors.append(_cosine_factor(min(max(r, 0.0), 1.0), epochs))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
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
