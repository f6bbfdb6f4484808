"""SHA-256 of checkpoint files (streamed: checkpoints can be gigabytes)."""
from __future__ import annotations

import hashlib


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
