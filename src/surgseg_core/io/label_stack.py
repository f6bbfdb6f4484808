"""Result label stacks (T, H, W) that never need the whole video in RAM.

A widget that writes one label map per frame of a long video needs an array of
the video's shape: 15,000 frames at 1080p are 31 GB of uint8. Small stacks are
plain numpy arrays; larger ones are ``.npy`` memory maps on disk (a sparse file:
untouched frames cost neither RAM nor disk), which napari's Labels layer paints
into like any array; the file is deleted when the array is garbage collected.
"""
from __future__ import annotations

import logging
import os
import uuid
import weakref
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_RAM_MB = 256.0


def label_stack_dir() -> Path:
    """``$SURGSEG_LABEL_STACK_DIR`` or the user cache folder."""
    if os.environ.get("SURGSEG_LABEL_STACK_DIR"):
        return Path(os.environ["SURGSEG_LABEL_STACK_DIR"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-surgseg")) / "label_stacks"


def new_label_stack(
    shape: Sequence[int],
    dtype=np.uint8,
    *,
    name: str = "labels",
    folder: Optional[Union[str, os.PathLike]] = None,
    max_ram_mb: float = DEFAULT_MAX_RAM_MB,
) -> np.ndarray:
    """A zero-filled label array of ``shape``: in memory up to ``max_ram_mb``,
    else a memory-mapped ``.npy`` file in ``folder`` (default
    :func:`label_stack_dir`)."""
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes <= max_ram_mb * 1e6:
        return np.zeros(shape, dtype)
    folder = Path(folder) if folder is not None else label_stack_dir()
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "labels"
    path = folder / f"{safe}-{uuid.uuid4().hex[:8]}.npy"
    log.info("label stack %s (%.1f GB) is memory-mapped from %s", shape, nbytes / 1e9, path)
    # open_memmap writes only the header and sets the file size: the OS keeps it sparse
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    # scratch space: the file goes when the array does (autosave keeps its own copy)
    weakref.finalize(arr, _remove, str(path))
    return arr


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
