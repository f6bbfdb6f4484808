"""Liver training/evaluation samples and the torch dataset.

Folder layouts found by :func:`find_samples` (``fmt="auto"`` tries them in
this order):

* ``generic``: ``images/NAME.(png|jpg)`` with ``masks/NAME.png`` index masks
  (the synthetic liver scene writes this);
* ``l3d``: labelme JSON files anywhere below the root, each naming its image
  (``imagePath``) or lying next to an image with the same stem;
* ``p2ilf``: ``NAME.xml`` (or P2ILF ``NAME.json``) next to ``NAME.(png|jpg)``;
* ``colour``: ``NAME.jpg`` with a colour label image ``NAME_GT.(jpg|png)``.

Curve annotations are drawn at the network resolution with the line
thickness scaled from the original image (``line_thickness`` is in original
pixels; 12 px at 1920x1080 as in the P2ILF evaluation), rather than drawn
large and shrunk with nearest-neighbour sampling.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ...errors import DatasetError
from .rasterize import rasterize_curves, scale_curves
from .readers import colour_labels_to_mask, read_annotation, read_image, read_index_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FORMATS = ("auto", "generic", "l3d", "p2ilf", "colour")


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path
    kind: str  # "mask", "curves" or "colour"


def _images_by_stem(folder: Path) -> dict:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _find_generic(root: Path) -> List[Sample]:
    img_dir, mask_dir = root / "images", root / "masks"
    if not (img_dir.is_dir() and mask_dir.is_dir()):
        return []
    masks = _images_by_stem(mask_dir)
    images = _images_by_stem(img_dir)
    _warn_unpaired(root, sorted(set(images) - set(masks)), "images without a mask", len(images))
    _warn_unpaired(root, sorted(set(masks) - set(images)), "masks without an image", len(masks))
    return [Sample(p, masks[s], "mask") for s, p in images.items() if s in masks]


def _warn_unpaired(root: Path, names: List[str], what: str, total: int) -> None:
    """Unpaired files are left out of training: say so (they were skipped silently)."""
    if names:
        import warnings

        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(f"{root}: {len(names)} of {total} {what} are not used ({shown})", UserWarning, stacklevel=4)


def _find_l3d(root: Path) -> List[Sample]:
    out = []
    for js in sorted(root.rglob("*.json")):
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "shapes" not in data:
            continue
        cand = [js.parent / data["imagePath"]] if data.get("imagePath") else []
        cand += [js.with_suffix(s) for s in IMAGE_SUFFIXES]
        cand += [js.parent.parent / "images" / (js.stem + s) for s in IMAGE_SUFFIXES]
        img = next((c for c in cand if c.is_file()), None)
        if img is not None:
            out.append(Sample(img, js, "curves"))
    return out


def _find_p2ilf(root: Path) -> List[Sample]:
    out = []
    for ann in sorted(list(root.rglob("*.xml")) + list(root.rglob("*.json"))):
        img = next((ann.with_suffix(s) for s in IMAGE_SUFFIXES if ann.with_suffix(s).is_file()), None)
        if img is None or (ann.suffix.lower() == ".json" and _is_labelme(ann)):
            continue
        out.append(Sample(img, ann, "curves"))
    return out


def _is_labelme(path: Path) -> bool:
    try:
        return "shapes" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return False


def _find_colour(root: Path) -> List[Sample]:
    out = []
    for gt in sorted(root.rglob("*_GT.*")):
        if gt.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = gt.stem[: -len("_GT")]
        img = next((gt.with_name(stem + s) for s in IMAGE_SUFFIXES if gt.with_name(stem + s).is_file()), None)
        if img is not None:
            out.append(Sample(img, gt, "colour"))
    return out


_FINDERS = {"generic": _find_generic, "l3d": _find_l3d, "p2ilf": _find_p2ilf, "colour": _find_colour}


def find_samples(root, fmt: str = "auto") -> List[Sample]:
    root = Path(root)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown liver dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise DatasetError(f"liver dataset folder not found: {root}")
    order = list(_FINDERS) if fmt == "auto" else [fmt]
    for name in order:
        samples = _FINDERS[name](root)
        if samples:
            return samples
    raise DatasetError(
        f"no liver samples found in {root} (format {fmt}); expected images/ + masks/, labelme JSON, "
        "P2ILF XML next to images, or NAME_GT colour labels"
    )


def load_mask(sample: Sample, image_shape: Tuple[int, int], out_size: Optional[Tuple[int, int]] = None,
              line_thickness: float = 12.0) -> np.ndarray:
    """Index mask of ``sample``; at ``out_size`` (W, H) if given (curves are
    drawn at that size, masks resized with nearest neighbour)."""
    h, w = image_shape
    if sample.kind == "curves":
        ann = read_annotation(sample.label)
        if out_size is None:
            return rasterize_curves(ann.curves, (h, w), line_thickness)
        sx, sy = out_size[0] / w, out_size[1] / h
        return rasterize_curves(scale_curves(ann.curves, sx, sy), (out_size[1], out_size[0]),
                                max(1.0, line_thickness * (sx + sy) / 2))
    if sample.kind == "colour":
        mask = colour_labels_to_mask(read_image(sample.label))
    else:
        mask = read_index_mask(sample.label)
    if mask.shape != (h, w):
        raise DatasetError(f"{sample.label}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                           f"{sample.image.name} is {w}x{h}")
    return mask if out_size is None else resize_mask(mask, out_size)


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of uint8 RGB to (W, H)."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    import torch
    import torch.nn.functional as F

    # np.require copies a read-only input (a PIL image's array): torch warns on non-writable arrays
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
    shrink = size[0] < image.shape[1] or size[1] < image.shape[0]
    out = F.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if mask.shape[1] == size[0] and mask.shape[0] == size[1]:
        return mask
    rows = np.minimum(((np.arange(size[1]) + 0.5) * mask.shape[0] / size[1]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(size[0]) + 0.5) * mask.shape[1] / size[0]).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


class LiverDataset:
    """Torch-style dataset: ``{"image": float (3, H, W) in [0, 1], "mask": int64 (H, W)}``
    at ``size`` (W, H). ImageNet normalisation happens inside the model so that
    training, evaluation and prediction cannot disagree. ``flip`` applies random
    horizontal and vertical flips (p = 0.5 each) identically to image and mask."""

    def __init__(self, samples: Sequence[Sample], size: Tuple[int, int] = (416, 320), flip: bool = False,
                 line_thickness: float = 12.0, cache: bool = True) -> None:
        if not samples:
            raise DatasetError("liver dataset has no samples")
        self.samples = list(samples)
        self.size = (int(size[0]), int(size[1]))
        self.flip = flip
        self.line_thickness = line_thickness
        self._cache = {} if cache else None
        self.class_weights = None  # set by the method: travels with each item to the loss

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W, 3), mask uint8 (H, W)) at the dataset size, no augmentation."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_image(sample.image)
        mask = load_mask(sample, image.shape[:2], self.size, self.line_thickness)
        item = (resize_image(image, self.size), mask)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def masks(self):
        for i in range(len(self)):
            yield self.load(i)[1]

    def __getitem__(self, index: int) -> dict:
        import torch

        image, mask = self.load(index)
        if self.flip:  # torch RNG: seeded by the trainer and per DataLoader worker
            if torch.rand(()) < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if torch.rand(()) < 0.5:
                image, mask = image[::-1], mask[::-1]
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        item = {"image": img, "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(), "index": index}
        if self.class_weights is not None:
            item["class_weights"] = self.class_weights
        return item
