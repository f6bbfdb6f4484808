"""npe2 writers: thin adapters from napari layer data to the core exporters in
:mod:`surgseg_core.io.export` (which the CLI uses too).

Every file carries its provenance (:func:`layer_provenance`): the layer's
``metadata["provenance"]`` (the model run that made it) plus its video
(``metadata["source_video"]``, set when the layer is autosaved) with its
hash, the source frames the layer covers (its placement along t) and the
placement itself (scale, translate: the reader puts the layer back there)."""
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
    labels = _as_labels(data)
    return [str(export.write_labels_tiff(labels, p, provenance=layer_provenance("labels", labels, attributes)))]


def write_labels_png(path: str, data: Any, attributes: dict) -> List[str]:
    """Labels layer -> folder of numbered PNG masks (000000.png, ...)."""
    labels = _as_labels(data)
    return [str(export.write_png_masks(labels, Path(path), provenance=layer_provenance("labels", labels, attributes)))]


def write_points_csv(path: str, data: Any, attributes: dict) -> List[str]:
    """Points layer -> CSV ``frame,x,y`` plus one column per point feature."""
    p = Path(path)
    if p.suffix.lower() != ".csv":
        p = p.with_suffix(".csv")
    features = attributes.get("features")
    if features is not None and len(getattr(features, "columns", features)) == 0:
        features = None
    points = np.asarray(data)
    return [str(export.write_points_csv(points, p, features=features,
                                        provenance=layer_provenance("points", points, attributes)))]


def _as_labels(data: Any) -> Any:
    # Multiscale labels arrive as a list of levels: save the full-resolution one.
    if isinstance(data, list):
        data = data[0]
    return data


def layer_provenance(kind: str, data: Any, attributes: dict) -> dict:
    """The provenance of a saved layer (``attributes``: napari's layer
    state: metadata, scale, translate)."""
    from surgseg_core.provenance import build_provenance

    meta = dict(attributes.get("metadata") or {})
    base = dict(meta.get("provenance") or {})
    source = meta.get("source_video") or base.get("source_video")
    scale = list(attributes.get("scale") or [])
    translate = list(attributes.get("translate") or [])
    if kind == "labels":
        ndim = len(getattr(data, "shape", ()))
    else:
        ndim = np.asarray(data).shape[-1] if np.ndim(data) == 2 else 0
    timed = ndim == 3 and len(scale) >= 3 and len(translate) >= 3
    start, step = (float(translate[-3]), float(scale[-3])) if timed else (0.0, 1.0)
    if kind == "labels":
        layer_frames = range(int(data.shape[0])) if ndim == 3 else None
    else:
        pts = np.asarray(data, float)
        layer_frames = pts[:, 0] if ndim == 3 and len(pts) else ([] if ndim == 3 else None)
    frames = None if layer_frames is None else [start + float(t) * step for t in layer_frames]
    placement = {"scale": [float(v) for v in scale[-ndim:]], "translate": [float(v) for v in translate[-ndim:]]} \
        if ndim and len(scale) >= ndim and len(translate) >= ndim else None
    return build_provenance(base=base, result=kind, source=source, frames=frames,
                            frame_map={"start": start, "step": step} if ndim == 3 else None,
                            layer=attributes.get("name"), placement=placement)
