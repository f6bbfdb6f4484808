"""Provenance of everything the engine produces: which model, which
weights (by hash), which config, which prompts, which software versions
(the record itself is :func:`surgseg_core.provenance.build_provenance`;
the video and frames are added where the run knows them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ..provenance import build_provenance as _build
from ..provenance import package_version as _pkg_version
from ..weights.hashing import sha256_file


def model_identity(model) -> Dict[str, Any]:
    """Name, config and weights hash recorded on the model by ``build_model``.
    A model without weights is marked ``random-init`` (never passed off as
    an official checkpoint)."""
    ckpt = getattr(model, "surgseg_checkpoint", None)
    sha = getattr(model, "surgseg_checkpoint_sha256", None)
    if ckpt is not None and sha is None and Path(ckpt).is_file():
        sha = sha256_file(ckpt)
        model.surgseg_checkpoint_sha256 = sha
    return {
        "model": getattr(model, "surgseg_model_name", None) or (Path(ckpt).stem if ckpt else "random-init"),
        "config": getattr(model, "surgseg_config_name", None),
        "checkpoint": ckpt,
        "checkpoint_sha256": sha,
        "image_size": int(getattr(model, "image_size", 0)),
        "variant": getattr(model, "surgseg_variant", None),
        # parameters the weights did not hold (a variant's new modules, at their init)
        "new_parameters": list(getattr(getattr(model, "surgseg_load_report", None), "new_keys", None) or []),
    }


def build_provenance(model, prompts: List[Dict[str, Any]], options: Optional[Dict[str, Any]] = None,
                     **fields: Any) -> Dict[str, Any]:
    """The engine's record: the model's identity, prompts and options plus
    the shared fields (``fields``: ``source``, ``frames``, ``result``, ...)."""
    identity = model_identity(model)
    base = {**identity, "sam2_version": _pkg_version("sam2"), "torch_version": _pkg_version("torch")}
    return _build(base=base, model=identity, prompts=prompts, options=dict(options or {}), **fields)
