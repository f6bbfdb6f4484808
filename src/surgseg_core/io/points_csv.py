"""Points on disk: CSV ``frame,x,y[,feature...]`` (see
:mod:`surgseg_core.io.export` for the convention), written atomically."""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------
# Points <-> CSV
# --------------------------------------------------------------------------


@dataclass
class PointsTable:
    """Points as napari stores them plus their per-point features.

    ``data`` is (N, 3) ``(frame, y, x)`` or (N, 2) ``(y, x)``.
    """

    data: np.ndarray
    features: Dict[str, np.ndarray] = field(default_factory=dict)


def _format_number(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)
    return str(v)


def write_points_csv(
    points: Any,
    path: PathLike,
    *,
    features: Optional[Mapping[str, Sequence[Any]]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Save points (napari order: (N, 3) ``(t, y, x)`` or (N, 2) ``(y, x)``)
    as CSV ``frame,x,y[,feature...]`` (see module docstring), atomically.

    ``features`` is a mapping or pandas DataFrame of per-point columns;
    ``provenance`` goes into ``<file>.provenance.json`` (CSV has no place
    for it), written after the CSV.
    """
    path = Path(path)
    data = np.asarray(points, dtype=float)
    if data.size == 0:
        data = data.reshape(0, data.shape[-1] if data.ndim == 2 and data.shape[-1] in (2, 3) else 3)
    if data.ndim != 2 or data.shape[1] not in (2, 3):
        raise DatasetError(
            f"points for {path.name}: expected an (N, 3) array of (frame, y, x) or (N, 2) of (y, x), "
            f"got shape {data.shape}"
        )
    if not np.all(np.isfinite(data)):
        raise DatasetError(f"points for {path.name}: coordinates contain NaN or infinity")
    has_frame = data.shape[1] == 3
    if has_frame and not np.allclose(data[:, 0], np.round(data[:, 0])):
        raise DatasetError(f"points for {path.name}: frame indices must be whole numbers")

    cols: Dict[str, list] = {}
    for name in features if features is not None else ():
        if name in ("frame", "x", "y"):
            raise DatasetError(f"points for {path.name}: feature name '{name}' clashes with a coordinate column")
        values = list(features[name])
        if len(values) != len(data):
            raise DatasetError(
                f"points for {path.name}: feature '{name}' has {len(values)} values for {len(data)} points"
            )
        cols[str(name)] = values

    header = (["frame"] if has_frame else []) + ["x", "y"] + list(cols)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i, row in enumerate(data):
                coords = ([int(round(row[0]))] if has_frame else []) + [row[-1], row[-2]]
                writer.writerow([_format_number(v) for v in coords] + [_format_number(cols[c][i]) for c in cols])
    if provenance is not None:
        from ..provenance import write_sidecar

        write_sidecar(path, provenance)
    log.info("wrote %d point(s) to %s", len(data), path)
    return path


def _parse_column(values: list[str]) -> np.ndarray:
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in values])
        except ValueError:
            continue
    if all(v in ("True", "False") for v in values) and values:
        return np.array([v == "True" for v in values])
    return np.array(values, dtype=object)


def read_points_csv(path: PathLike) -> PointsTable:
    """Read a points CSV (columns named ``frame``/``t``, ``x``, ``y`` in any
    order, other columns become features) into napari order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: points CSV not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read points CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{path}: empty file, expected a header 'frame,x,y'")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if "x" not in lower or "y" not in lower:
        raise DatasetError(f"{path}: header {header} lacks 'x' and 'y' columns (expected 'frame,x,y,...')")
    frame_col = next((lower.index(n) for n in ("frame", "t") if n in lower), None)
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DatasetError(f"{path}: line {i} has {len(r)} fields, the header has {len(header)}")
    columns = {h: [r[j].strip() for r in body] for j, h in enumerate(header)}

    def numeric(name: str) -> np.ndarray:
        try:
            return np.array([float(v) for v in columns[name]], dtype=float)
        except ValueError as exc:
            raise DatasetError(f"{path}: column '{name}' must be numeric ({exc})") from exc

    x = numeric(header[lower.index("x")])
    y = numeric(header[lower.index("y")])
    if frame_col is not None:
        data = np.stack([numeric(header[frame_col]), y, x], axis=1) if body else np.zeros((0, 3))
    else:
        data = np.stack([y, x], axis=1) if body else np.zeros((0, 2))
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1)) if len(data) else []
    if len(bad):
        raise DatasetError(f"{path}: line {int(bad[0]) + 2} has a NaN or infinite coordinate "
                           f"({len(bad)} line(s) in all); every point needs finite frame, x and y")
    if frame_col is not None and len(data) and (
            not np.allclose(data[:, 0], np.round(data[:, 0])) or (data[:, 0] < 0).any()):
        raise DatasetError(f"{path}: column '{header[frame_col]}' must hold frame numbers 0, 1, 2, ...")
    coord_idx = {lower.index("x"), lower.index("y")} | ({frame_col} if frame_col is not None else set())
    features = {h: _parse_column(columns[h]) for j, h in enumerate(header) if j not in coord_idx}
    return PointsTable(data=data, features=features)
