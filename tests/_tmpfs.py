"""A tmpfs mounted for one test (a small or read-only disk), skipped with the
reason where this process may not mount (root in a VM or container can)."""
from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, options: str, what: str) -> Iterator[Path]:
    mnt = parent / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount {what} here ({res.stderr.strip() or 'mount failed'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
