"""Model weights: official SAM 2 / 2.1 checkpoints and fine-tuned ones.

``register_checkpoint`` (trainers), ``list_weights``, ``resolve_weights``,
``import_checkpoint``, ``download_weights``, ``verify_weights``; the
``surgseg weights`` command uses exactly these.
"""
from .official import OFFICIAL, OfficialCheckpoint
from .store import (
    ENV_DIR,
    VerifyResult,
    WeightsEntry,
    download_weights,
    get_entry,
    import_checkpoint,
    list_weights,
    register_checkpoint,
    resolve_weights,
    verify_weights,
    weights_dir,
)

__all__ = [
    "ENV_DIR",
    "OFFICIAL",
    "OfficialCheckpoint",
    "VerifyResult",
    "WeightsEntry",
    "download_weights",
    "get_entry",
    "import_checkpoint",
    "list_weights",
    "register_checkpoint",
    "resolve_weights",
    "verify_weights",
    "weights_dir",
]
