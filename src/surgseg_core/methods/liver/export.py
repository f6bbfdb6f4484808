"""Landmark exports: JSON and CSV for a whole video, P2ILF XML per frame.

JSON layout::

    {"format": "surgseg-liver-landmarks", "version": 1,
     "classes": {"1": "silhouette", "2": "ridge", "3": "ligament"},
     "image_size": [W, H], "provenance": {...},
     "frames": {"0": {"silhouette": [[[x, y], ...], ...], "ridge": [...], "ligament": [...]}, ...}}

CSV columns: frame, class_id, class_name, curve, point, x, y.
All writes are atomic.
"""
from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...atomic import atomic_write_text
from ...errors import DatasetError
from . import CLASS_NAMES, LANDMARK_CLASSES

FORMAT = "surgseg-liver-landmarks"
P2ILF_TYPES = {1: "Silhouette", 2: "Ridge", 3: "Ligament"}
NAME_TO_CLASS = {v: k for k, v in CLASS_NAMES.items()}

Polylines = Mapping[int, Sequence[np.ndarray]]


def _num(v: float) -> float:
    return round(float(v), 2)


def landmarks_to_dict(frames: Mapping[int, Polylines], image_size=None, provenance: Optional[dict] = None) -> dict:
    out_frames = {}
    for f in sorted(frames):
        out_frames[str(int(f))] = {
            CLASS_NAMES[c]: [[[_num(x), _num(y)] for x, y in np.asarray(p).reshape(-1, 2)] for p in frames[f].get(c, ())]
            for c in LANDMARK_CLASSES
        }
    return {
        "format": FORMAT, "version": 1,
        "classes": {str(c): CLASS_NAMES[c] for c in LANDMARK_CLASSES},
        "image_size": list(image_size) if image_size is not None else None,
        "provenance": provenance or {},
        "frames": out_frames,
    }


def write_landmarks_json(path, frames: Mapping[int, Polylines], image_size=None,
                         provenance: Optional[dict] = None) -> Path:
    data = landmarks_to_dict(frames, image_size, provenance)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return Path(path)


def read_landmarks_json(path) -> Dict[int, Dict[int, List[np.ndarray]]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read landmarks {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a {FORMAT} file")
    out: Dict[int, Dict[int, List[np.ndarray]]] = {}
    for f, classes in data.get("frames", {}).items():
        out[int(f)] = {NAME_TO_CLASS[name]: [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in curves]
                       for name, curves in classes.items() if name in NAME_TO_CLASS}
    return out


def write_landmarks_csv(path, frames: Mapping[int, Polylines], provenance: Optional[dict] = None) -> Path:
    """Curves as CSV rows; ``provenance`` in ``<file>.provenance.json``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "class_id", "class_name", "curve", "point", "x", "y"])
    for f in sorted(frames):
        for c in LANDMARK_CLASSES:
            for ci, p in enumerate(frames[f].get(c, ())):
                for pi, (x, y) in enumerate(np.asarray(p).reshape(-1, 2)):
                    w.writerow([int(f), c, CLASS_NAMES[c], ci, pi, _num(x), _num(y)])
    atomic_write_text(path, buf.getvalue())
    _sidecar(path, provenance)
    return Path(path)


def _sidecar(path, provenance: Optional[dict]) -> None:
    if provenance is not None:
        from ...provenance import write_sidecar

        write_sidecar(path, provenance)


def p2ilf_xml_string(polylines: Polylines) -> str:
    """One frame in the P2ILF contour XML layout (readable by
    :func:`surgseg_core.methods.liver.readers.read_p2ilf_xml`)."""
    root = ET.Element("contours")
    items = [(c, np.asarray(p).reshape(-1, 2)) for c in LANDMARK_CLASSES for p in polylines.get(c, ())]
    ET.SubElement(root, "numOfContours").text = str(len(items))
    for c, p in items:
        contour = ET.SubElement(root, "contour")
        ET.SubElement(contour, "contourType").text = P2ILF_TYPES[c]
        pts = ET.SubElement(contour, "imagePoints")
        ET.SubElement(pts, "numOfPoints").text = str(len(p))
        ET.SubElement(pts, "x").text = ", ".join(f"{_num(v):g}" for v in p[:, 0])
        ET.SubElement(pts, "y").text = ", ".join(f"{_num(v):g}" for v in p[:, 1])
    ET.indent(root, "\t")
    return "<?xml version='1.0' encoding='utf-8'?>\n" + ET.tostring(root, encoding="unicode") + "\n"


def write_p2ilf_xml(path, polylines: Polylines, provenance: Optional[dict] = None) -> Path:
    """One frame's curves as P2ILF XML; ``provenance`` in ``<file>.provenance.json``."""
    atomic_write_text(path, p2ilf_xml_string(polylines))
    _sidecar(path, provenance)
    return Path(path)


def write_p2ilf_xml_frames(folder, frames: Mapping[int, Polylines], stem: str = "frame",
                           provenance: Optional[dict] = None) -> List[Path]:
    """One ``{stem}_{frame:06d}.xml`` per frame (each with its provenance
    sidecar naming its own frame when ``provenance`` is given: ``frames``
    of the record are the frames of the export, in order)."""
    folder = Path(folder)
    order = sorted(frames)
    source_frames = list((provenance or {}).get("frames") or order)
    out = []
    for i, f in enumerate(order):
        prov = None if provenance is None else {**provenance, "frames": [source_frames[i] if i < len(source_frames)
                                                                         else f]}
        out.append(write_p2ilf_xml(folder / f"{stem}_{int(f):06d}.xml", frames[f], prov))
    return out
