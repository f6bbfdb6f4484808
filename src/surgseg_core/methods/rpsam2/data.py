"""Instance-annotated frames for RP-SAM2: one image and its objects (a mask
and a class name each), read from four layouts (``data_format``):

* ``image_mask``: ``root/images/<stem>.png|jpg`` + ``root/masks/<stem>.png``
  index masks (``datasets.image_mask``); each non-zero value is one object,
  its class the value (``class_names`` config: ``{value: name}``).
* ``supervisely`` (Cataract-1K): ``.../img/<name>`` + ``.../ann/<name>.json``
  (``size``, ``objects[].classTitle``, ``objects[].points.exterior``
  (``interior``: holes), polygon objects only); searched recursively.
* ``coco``: one COCO json (``root/*.json`` or ``annotations/*.json``):
  ``images``, ``annotations`` (polygons or RLE, compressed or not) and
  ``categories``; images under ``root``, ``root/images`` or ``image_root``.
* ``endovis``: EndoVis 2017 instrument folders: ``left_frames/<frame>.png``
  + ``ground_truth/<Instrument>_labels/<frame>.png`` part masks (any non-zero
  part is the instrument; the class is the folder name without
  ``Left_``/``Right_`` and ``_labels``).
``auto`` picks the layout from what is in the folder.

Polygons are filled with scikit-image. RLE is decoded by :func:`rle_decode`
(COCO's format), not pycocotools: its decoder does not check that the run
lengths cover the image (an RLE that ends early returned uninitialised
memory as a mask, pycocotools 2.0.11), so the runs must be parsed and
checked here anyway, and filling them is a few lines of numpy.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ...errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FORMATS = ("auto", "image_mask", "supervisely", "coco", "endovis")


@dataclass
class Sample:
    """One annotated frame; ``load_objects()`` -> [(bool mask HxW, class name)]."""

    name: str
    image: Path
    load_objects: Callable[[], List[Tuple[np.ndarray, str]]]

    def read_image(self) -> np.ndarray:
        try:
            with Image.open(self.image) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"cannot read image {self.image}: {exc}") from None

    def objects(self) -> List[Tuple[np.ndarray, str]]:
        return self.load_objects()


# ------------------------------------------------------------ rasterising
def fill_polygon(mask: np.ndarray, points: Sequence[Sequence[float]], value: bool = True, *, where: str = "") -> None:
    """Fill an (x, y) polygon into ``mask`` (in place) with scikit-image."""
    from skimage.draw import polygon

    pts = np.asarray(points, float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise DatasetError(f"{where}: a polygon needs at least 3 (x, y) points, got shape {pts.shape}")
    rr, cc = polygon(pts[:, 1], pts[:, 0], shape=mask.shape)
    mask[rr, cc] = value


def rle_counts_from_string(s: str) -> List[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' rleFrString)."""
    counts: List[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: Mapping[str, Any], *, where: str = "") -> np.ndarray:
    """A COCO RLE ({"size": [h, w], "counts": list or string}) -> bool (h, w)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: RLE needs 'size' [h, w] and 'counts' ({exc})") from None
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
    counts = [int(c) for c in counts]
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise DatasetError(f"{where}: RLE run lengths sum to {sum(counts)}, expected {h * w} (h x w)")
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape(w, h).T  # column-major, as COCO stores it


# --------------------------------------------------------------- readers
def _images_in(folder: Path) -> Dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def read_image_mask(root: Path, class_names: Optional[Mapping[Any, str]] = None) -> List[Sample]:
    from ...datasets.image_mask import find_image_mask_pairs, read_index_mask

    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    out = []
    for stem, ip, mp in find_image_mask_pairs(root):
        def load(mp=mp):
            m = read_index_mask(mp)
            return [(m == v, names.get(int(v), str(int(v)))) for v in np.unique(m) if v]
        out.append(Sample(stem, ip, load))
    return out


def _supervisely_objects(ann_path: Path) -> List[Tuple[np.ndarray, str]]:
    try:
        ann = json.loads(ann_path.read_text(encoding="utf-8"))
        h, w = int(ann["size"]["height"]), int(ann["size"]["width"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{ann_path}: not a Supervisely annotation with size.height/width ({exc})") from None
    objs = []
    for i, obj in enumerate(ann.get("objects") or []):
        where = f"{ann_path} object {i}"
        if obj.get("geometryType", "polygon") != "polygon":
            continue  # bitmaps, rectangles, points: not instrument outlines
        try:
            cls = str(obj["classTitle"])
            exterior = obj["points"]["exterior"]
        except (KeyError, TypeError):
            raise DatasetError(f"{where}: needs classTitle and points.exterior") from None
        m = np.zeros((h, w), bool)
        fill_polygon(m, exterior, where=where)
        for hole in obj["points"].get("interior") or []:
            fill_polygon(m, hole, False, where=where)
        if m.any():
            objs.append((m, cls))
    return objs


def read_supervisely(root: Path) -> List[Sample]:
    out = []
    for ann_dir in sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name == "ann"):
        img_dir = ann_dir.parent / "img"
        if not img_dir.is_dir():
            raise DatasetError(f"Supervisely folder {ann_dir.parent} has ann/ but no img/")
        images = _images_in(img_dir)
        for ann in sorted(ann_dir.glob("*.json")):
            name = ann.name[: -len(".json")]
            if name not in images:
                raise DatasetError(f"{ann}: its image {img_dir / name} is missing")
            out.append(Sample(f"{ann_dir.parent.name}/{Path(name).stem}", images[name],
                              lambda ann=ann: _supervisely_objects(ann)))
    return out


def _coco_json(root: Path) -> Path:
    if root.is_file() and root.suffix == ".json":
        return root
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    found = [p for p in found if p.name not in ("meta.json", "classes.json")]
    if len(found) != 1:
        raise DatasetError(f"COCO dataset {root}: expected one annotation .json in it or in annotations/, "
                           f"found {[p.name for p in found] or 'none'}")
    return found[0]


def read_coco(root: Path, image_root: Optional[Path] = None) -> List[Sample]:
    path = _coco_json(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        anns = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a COCO annotation file with images, annotations and categories ({exc})") from None
    base = path.parent.parent if path.parent.name == "annotations" else path.parent
    roots = [Path(image_root)] if image_root else [base, base / "images"]
    by_image: Dict[int, List[dict]] = {}
    for a in anns:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    out = []
    for iid, im in sorted(images.items()):
        file = next((r / im["file_name"] for r in roots if (r / im["file_name"]).is_file()), None)
        if file is None:
            raise DatasetError(f"{path}: image {im['file_name']!r} not found under {', '.join(map(str, roots))}")
        h, w = int(im["height"]), int(im["width"])

        def load(items=by_image.get(iid, []), h=h, w=w, name=im["file_name"]):
            objs = []
            for a in items:
                where = f"{path} annotation {a.get('id')} ({name})"
                cls = cats.get(int(a["category_id"]))
                if cls is None:
                    raise DatasetError(f"{where}: unknown category_id {a['category_id']}")
                seg = a.get("segmentation")
                if isinstance(seg, dict):
                    m = rle_decode(seg, where=where)
                    if m.shape != (h, w):
                        raise DatasetError(f"{where}: RLE size {m.shape} differs from the image's {(h, w)}")
                elif isinstance(seg, list) and seg:
                    m = np.zeros((h, w), bool)
                    for poly in seg:
                        fill_polygon(m, np.asarray(poly, float).reshape(-1, 2), where=where)
                else:
                    raise DatasetError(f"{where}: no polygon or RLE segmentation")
                if m.any():
                    objs.append((m, cls))
            return objs
        out.append(Sample(Path(im["file_name"]).stem, file, load))
    return out


_SIDE = re.compile(r"^(left|right)_", re.I)


def endovis_class(folder_name: str) -> str:
    name = folder_name[: -len("_labels")] if folder_name.endswith("_labels") else folder_name
    return _SIDE.sub("", name)


def read_endovis(root: Path) -> List[Sample]:
    frames_dir, gt_dir = root / "left_frames", root / "ground_truth"
    if not frames_dir.is_dir() or not gt_dir.is_dir():
        raise DatasetError(f"EndoVis folder {root} needs left_frames/ and ground_truth/<Instrument>_labels/")
    label_dirs = sorted(p for p in gt_dir.iterdir() if p.is_dir())
    if not label_dirs:
        raise DatasetError(f"{gt_dir} has no <Instrument>_labels folders")
    out = []
    for name, img in _images_in(frames_dir).items():
        files = [(d / name, endovis_class(d.name)) for d in label_dirs if (d / name).is_file()]

        def load(files=files):
            objs = []
            for f, cls in files:
                with Image.open(f) as im:
                    m = np.asarray(im.convert("L")) > 0
                if m.any():
                    objs.append((m, cls))
            return objs
        out.append(Sample(Path(name).stem, img, load))
    return out


def detect_format(root: Path) -> str:
    if (root / "left_frames").is_dir() and (root / "ground_truth").is_dir():
        return "endovis"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "image_mask"
    if (root / "ann").is_dir() or any(p.name == "ann" and p.is_dir() for p in root.rglob("ann")):
        return "supervisely"
    if root.is_file() or list(root.glob("*.json")) or (root / "annotations").is_dir():
        return "coco"
    raise DatasetError(
        f"cannot tell the layout of {root}: expected images/ + masks/ (image_mask), ann/ + img/ (Supervisely, "
        "Cataract-1K), a COCO .json, or left_frames/ + ground_truth/ (EndoVis); set data_format"
    )


def read_samples(root: Union[str, Path], data_format: str = "auto", *,
                 class_names: Optional[Mapping[Any, str]] = None, image_root: Optional[str] = None) -> List[Sample]:
    """The annotated frames under ``root`` in ``data_format`` (see module doc)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"rpsam2 dataset not found: {root}")
    if data_format not in FORMATS:
        raise DatasetError(f"data_format must be one of {', '.join(FORMATS)}, got {data_format!r}")
    fmt = detect_format(root) if data_format == "auto" else data_format
    if fmt == "image_mask":
        samples = read_image_mask(root, class_names)
    elif fmt == "supervisely":
        samples = read_supervisely(root)
    elif fmt == "coco":
        samples = read_coco(root, Path(image_root) if image_root else None)
    else:
        samples = read_endovis(root)
    if not samples:
        raise DatasetError(f"no annotated frames found in {root} ({fmt} layout)")
    return samples


# ---------------------------------------------------------------- dataset
def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0


class InstanceFrames(torch.utils.data.Dataset):
    """Items: ``frame`` (H, W, 3) uint8 as stored (the feature cache hashes
    it), ``masks`` (O, S, S) uint8 at the model's resolution (objects
    smaller than ``min_area`` pixels there are left out), ``classes``,
    ``key`` (stable id of the frame, for the candidate cache)."""

    def __init__(self, samples: Sequence[Sample], image_size: int, *, min_area: int = 4) -> None:
        self.samples = list(samples)
        self.size = int(image_size)
        self.min_area = int(min_area)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        s = self.samples[idx]
        frame = s.read_image()
        masks, classes = [], []
        for m, cls in s.objects():
            if m.shape != frame.shape[:2]:
                raise DatasetError(f"{s.name}: a mask of class {cls!r} is {m.shape}, the image {frame.shape[:2]}")
            r = _resize_mask(m, self.size)
            if r.sum() >= self.min_area:
                masks.append(r)
                classes.append(cls)
        arr = np.stack(masks) if masks else np.zeros((0, self.size, self.size), bool)
        return {"frame": frame, "masks": torch.from_numpy(arr.astype(np.uint8)), "classes": classes,
                "key": f"{s.image}"}


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Frames differ in size and object count: lists, not stacked tensors."""
    return {"frames": [it["frame"] for it in items], "masks": [it["masks"] for it in items],
            "classes": [it["classes"] for it in items], "keys": [it["key"] for it in items]}
