"""Readers for liver landmark annotations.

* L3D: labelme-style JSON per image, ``shapes[].label`` in silhouette / ridge /
  ligament (also the dataset's misspelling "rigde"), ``shapes[].points`` as
  [[x, y], ...].
* P2ILF XML: ``contour/contourType`` in Silhouette / Ridge / Ligament,
  ``contour/imagePoints/x`` and ``.../y`` as comma-separated lists. The same
  content as JSON (both variants found in the challenge repository).
* P2ILF colour label images: red ridge, yellow silhouette, blue ligament on
  black, JPEG-compressed; pixels are classified by nearest hue once they pass
  saturation and value thresholds.
* Generic index masks (0..3) as PNG.

Curves are returned as ``{class_id: [array (N, 2) of x, y], ...}``.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ...errors import DatasetError
from . import LIGAMENT, RIDGE, SILHOUETTE

LABEL_ALIASES = {
    "silhouette": SILHOUETTE,
    "ridge": RIDGE,
    "rigde": RIDGE,  # misspelt in part of L3D
    "ligament": LIGAMENT,
    "falciform": LIGAMENT,
    "falciform ligament": LIGAMENT,
    "falciform_ligament": LIGAMENT,
}


@dataclass
class Annotation:
    curves: Dict[int, List[np.ndarray]]
    image_size: Optional[Tuple[int, int]] = None  # (W, H) when the file says so
    image_path: Optional[Path] = None


def class_of_label(label: str, source: object = "") -> Optional[int]:
    key = str(label).strip().lower()
    return LABEL_ALIASES.get(key)


def _add(curves: Dict[int, List[np.ndarray]], cls: int, xs, ys, source) -> None:
    pts = np.column_stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)])
    if len(pts) == 0:
        return
    if not np.isfinite(pts).all():
        raise DatasetError(f"{source}: non-finite coordinates in a {cls} contour")
    curves.setdefault(cls, []).append(pts)


def read_l3d_json(path) -> Annotation:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read L3D annotation {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DatasetError(f"{path}: not a labelme/L3D annotation (no 'shapes' list)")
    curves: Dict[int, List[np.ndarray]] = {}
    for i, shape in enumerate(data["shapes"]):
        cls = class_of_label(shape.get("label", ""))
        if cls is None:
            continue  # other labelme labels are not liver landmarks
        pts = np.asarray(shape.get("points", []), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise DatasetError(f"{path}: shape {i} ({shape.get('label')}) has malformed points")
        _add(curves, cls, pts[:, 0], pts[:, 1], path)
    size = None
    if data.get("imageWidth") and data.get("imageHeight"):
        size = (int(data["imageWidth"]), int(data["imageHeight"]))
    image_path = (path.parent / data["imagePath"]) if data.get("imagePath") else None
    return Annotation(curves, size, image_path)


def _split_numbers(text: Optional[str], path, what: str) -> np.ndarray:
    if text is None or not text.strip():
        return np.zeros(0)
    try:
        return np.asarray([float(v) for v in text.replace("\n", " ").split(",") if v.strip()], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{path}: bad number in {what}: {exc}") from exc


def read_p2ilf_xml(path) -> Annotation:
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"cannot read P2ILF XML {path}: {exc}") from exc
    curves: Dict[int, List[np.ndarray]] = {}
    contours = root.findall(".//contour")
    for i, contour in enumerate(contours):
        ctype = contour.findtext("contourType", default="")
        cls = class_of_label(ctype)
        if cls is None:
            raise DatasetError(f"{path}: contour {i} has unknown contourType {ctype!r}")
        pts = contour.find("imagePoints")
        if pts is None:
            raise DatasetError(f"{path}: contour {i} ({ctype}) has no imagePoints")
        xs = _split_numbers(pts.findtext("x"), path, f"contour {i} x")
        ys = _split_numbers(pts.findtext("y"), path, f"contour {i} y")
        if len(xs) != len(ys):
            raise DatasetError(f"{path}: contour {i} ({ctype}) has {len(xs)} x but {len(ys)} y values")
        _add(curves, cls, xs, ys, path)
    return Annotation(curves)


def read_p2ilf_json(path) -> Annotation:
    """Both JSON variants of the challenge: ``{"contours": {"contour": [...]}}``
    and ``{"numOfContours": n, "contour": [...]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read P2ILF JSON {path}: {exc}") from exc
    block = data.get("contours", data) if isinstance(data, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("contour"), list):
        raise DatasetError(f"{path}: not a P2ILF contour file (no 'contour' list)")
    curves: Dict[int, List[np.ndarray]] = {}
    for i, contour in enumerate(block["contour"]):
        cls = class_of_label(contour.get("contourType", ""))
        if cls is None:
            raise DatasetError(f"{path}: contour {i} has unknown contourType {contour.get('contourType')!r}")
        pts = contour.get("imagePoints") or {}
        xs, ys = np.asarray(pts.get("x", []), float), np.asarray(pts.get("y", []), float)
        if len(xs) != len(ys):
            raise DatasetError(f"{path}: contour {i} has {len(xs)} x but {len(ys)} y values")
        _add(curves, cls, xs, ys, path)
    return Annotation(curves)


def read_annotation(path) -> Annotation:
    """Dispatch on the file: XML -> P2ILF; JSON with 'shapes' -> L3D; other JSON -> P2ILF."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return read_p2ilf_xml(path)
    if path.suffix.lower() == ".json":
        try:
            head = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read annotation {path}: {exc}") from exc
        return read_l3d_json(path) if isinstance(head, dict) and "shapes" in head else read_p2ilf_json(path)
    raise DatasetError(f"{path}: unknown annotation type (expected .xml or .json)")


# Reference hues (fraction of a turn) of the P2ILF colour labels.
_HUES = {RIDGE: 0.0, SILHOUETTE: 1.0 / 6.0, LIGAMENT: 2.0 / 3.0}


def colour_labels_to_mask(rgb: np.ndarray, min_saturation: float = 0.35, min_value: float = 0.3,
                          max_hue_distance: float = 1.0 / 12.0) -> np.ndarray:
    """Index mask from a P2ILF colour label image (red ridge, yellow
    silhouette, blue ligament). JPEG smears the colours, so a pixel counts when
    it is saturated and bright enough, and takes the class of the nearest
    reference hue within ``max_hue_distance`` (1/12 turn = 30 degrees, half the
    red-yellow gap)."""
    from skimage.color import rgb2hsv

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DatasetError(f"colour label image must be RGB, got shape {rgb.shape}")
    hsv = rgb2hsv(rgb[..., :3])
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    candidate = (sat >= min_saturation) & (val >= min_value)
    classes = np.array(list(_HUES))
    refs = np.array(list(_HUES.values()))
    d = np.abs(hue[..., None] - refs)
    d = np.minimum(d, 1.0 - d)  # hue is circular
    nearest = d.argmin(-1)
    ok = candidate & (d.min(-1) <= max_hue_distance)
    out = np.zeros(rgb.shape[:2], np.uint8)
    out[ok] = classes[nearest[ok]]
    return out


def read_index_mask(path) -> np.ndarray:
    import imageio.v3 as iio

    path = Path(path)
    try:
        mask = iio.imread(path)
    except Exception as exc:  # imageio raises many types
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if mask.ndim == 3:
        if mask.shape[2] >= 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                       and np.array_equal(mask[..., 0], mask[..., 2])):
            raise DatasetError(f"{path}: RGB mask with different channels; use the colour-label format instead")
        mask = mask[..., 0]
    if mask.size and mask.max() > 3:
        raise DatasetError(f"{path}: mask has label {int(mask.max())}; liver masks use 0..3")
    return mask.astype(np.uint8)


def read_image(path) -> np.ndarray:
    import imageio.v3 as iio

    path = Path(path)
    try:
        img = iio.imread(path)
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DatasetError(f"{path}: expected an RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img
