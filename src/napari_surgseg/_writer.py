"""npe2 writers: thin adapters from napari layer data to the core exporters in
:mod:`surgseg_core.io.export` (which the CLI uses too)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

import numpy as np

from surgseg_core.io import export


def write_labels_tiff(path: str, data: Any, attributes: dict) -> List[str]:
    """Labels layer -> zlib-compressed multi-page TIFF (one page per frame)."""
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        p = p.with_suffix(".tif")
    return [str(export.write_labels_tiff(_as_labels(data), p))]


def write_labels_png(path: str, data: Any, attributes: dict) -> List[str]:
    """Labels layer -> folder of numbered PNG masks (000000.png, ...)."""
    return [str(export.write_png_masks(_as_labels(data), Path(path)))]


def write_points_csv(path: str, data: Any, attributes: dict) -> List[str]:
    """Points layer -> CSV ``frame,x,y`` plus one column per point feature."""
    p = Path(path)
    if p.suffix.lower() != ".csv":
        p = p.with_suffix(".csv")
    features = attributes.get("features")
    if features is not None and len(getattr(features, "columns", features)) == 0:
        features = None
    return [str(export.write_points_csv(np.asarray(data), p, features=features))]


def _as_labels(data: Any) -> Any:
    # Multiscale labels arrive as a list of levels: save the full-resolution one.
    if isinstance(data, list):
        data = data[0]
    return data
