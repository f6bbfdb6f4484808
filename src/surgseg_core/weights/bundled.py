"""Weights that ship with the repository's sample data (``sample_data/``).

Each bundled model is a folder with the weights file and ``weights.json``
(``name``, ``file``, ``sha256``, ``method``, ``config``, ``metrics``, ...,
the fields of :class:`~.store.WeightsEntry`); the model card sits beside
them. They are listed with the official and registered weights, so the demo
and the widgets find them by name; the recorded sha256 is checked when they
are verified like any other entry.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List

log = logging.getLogger(__name__)

BUNDLED_DIRS = ("sam2_demo",)


def _roots() -> List[Path]:
    roots = []
    if os.environ.get("SURGSEG_SAMPLE_DATA"):
        roots.append(Path(os.environ["SURGSEG_SAMPLE_DATA"]))
    roots.append(Path(__file__).resolve().parents[3] / "sample_data")  # src layout checkout
    return roots


def bundled_entries() -> list:
    """``WeightsEntry`` objects of the bundled weights that are present."""
    from .store import WeightsEntry

    out, seen = [], set()
    for root in _roots():
        for sub in BUNDLED_DIRS:
            meta = root / sub / "weights.json"
            if not meta.is_file():
                continue
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
                entry = WeightsEntry(
                    name=data["name"], path=str((meta.parent / data["file"]).resolve()), sha256=data.get("sha256"),
                    method=data.get("method", "sam2"), variant=data.get("variant"), config=data.get("config"),
                    base=data.get("base"),
                    source="bundled", size_bytes=data.get("size_bytes"), metrics=dict(data.get("metrics") or {}),
                    created=data.get("created"),
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring bundled weights %s: %s", meta, exc)
                continue
            if entry.name not in seen and entry.present:
                seen.add(entry.name)
                out.append(entry)
    return out
