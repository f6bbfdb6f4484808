"""Model weights: official SAM 2 / 2.1 checkpoints and fine-tuned ones.

``register_checkpoint`` (trainers), ``list_weights``, ``resolve_weights``,
``import_checkpoint``, ``download_weights``, ``verify_weights``; the
``surgseg weights`` command uses exactly these. ``state_dict``: the one
checkpoint reader and key checker; ``hashing.sha256_file``: the one hash.
"""
from .hashing import sha256_file
from .official import OFFICIAL, OfficialCheckpoint
from .state_dict import LoadReport, check_state_keys, load_state_into, read_checkpoint, read_state_dict
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
    "LoadReport",
    "check_state_keys",
    "load_state_into",
    "read_checkpoint",
    "read_state_dict",
    "sha256_file",
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
