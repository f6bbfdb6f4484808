"""Where the bundled sample data lives.

The repository's ``sample_data/`` (source checkout or editable install), or
``$SURGSEG_SAMPLE_DATA``; when neither holds a complete copy (a wheel
install), the samples are regenerated deterministically once into the user
cache folder. Shared by the napari sample-data hooks and ``surgseg demo``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List

log = logging.getLogger(__name__)

CLIP_DIR = "synthetic_clip"
LIVER_DIR = "synthetic_liver"
_KINDS = {CLIP_DIR: "endoscopy_clip", LIVER_DIR: "liver_scene"}


def is_complete(folder: Path, name: str) -> bool:
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("kind") == _KINDS[name] and (Path(folder) / "video.mp4").is_file()


def candidates(name: str) -> List[Path]:
    out = []
    if os.environ.get("SURGSEG_SAMPLE_DATA"):
        out.append(Path(os.environ["SURGSEG_SAMPLE_DATA"]) / name)
    out.append(Path(__file__).resolve().parents[3] / "sample_data" / name)  # src layout checkout
    return out


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-surgseg")) / "sample_data"


def generate(name: str, folder: Path) -> Path:
    """Write sample ``name`` into ``folder`` with the committed settings."""
    from .cli import SAMPLE_CLIP, SAMPLE_LIVER
    from .writer import write_liver_dataset, write_synthetic_clip

    if name == CLIP_DIR:
        return write_synthetic_clip(folder, **SAMPLE_CLIP)
    if name == LIVER_DIR:
        return write_liver_dataset(folder, **SAMPLE_LIVER)
    raise KeyError(f"unknown sample {name!r}; known: {', '.join(_KINDS)}")


def sample_folder(name: str) -> Path:
    """Folder holding sample ``name`` (``synthetic_clip`` or ``synthetic_liver``)."""
    for folder in candidates(name):
        if is_complete(folder, name):
            return folder
    cached = cache_dir() / name
    if not is_complete(cached, name):
        log.info("generating sample data %s into %s", name, cached)
        generate(name, cached)
    return cached
