"""The generic "image_mask" dataset layout the trainer reads::

    root/images/<stem>.png|jpg|jpeg|bmp|tif|tiff   RGB (or grey) frames
    root/masks/<stem>.png                           uint8 index masks (0 = background)

Every image needs a mask with the same stem and the same size; layout
problems are reported up front, naming what was expected and what was found.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png",)


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
            out.setdefault(p.stem, p)
    return out


def _describe(folder: Path, limit: int = 8) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return "nothing readable"
    if not names:
        return "an empty folder"
    more = f" ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def find_image_mask_pairs(root: PathLike, *, check_sizes: bool = True) -> List[Tuple[str, Path, Path]]:
    """``[(stem, image_path, mask_path), ...]`` sorted by stem, or DatasetError."""
    root = Path(root)
    expected = "expected root/images/<name>.png|jpg and root/masks/<name>.png"
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root} ({expected})")
    img_dir, mask_dir = root / "images", root / "masks"
    missing = [d.name for d in (img_dir, mask_dir) if not d.is_dir()]
    if missing:
        raise DatasetError(
            f"dataset folder {root} is not in the image_mask layout: missing {' and '.join(f'{m}/' for m in missing)}; "
            f"{expected}; found: {_describe(root)}"
        )
    images = _files_by_stem(img_dir, IMAGE_SUFFIXES)
    masks = _files_by_stem(mask_dir, MASK_SUFFIXES)
    if not images:
        raise DatasetError(f"dataset {root} is empty: no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}; "
                           f"found: {_describe(img_dir)}")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DatasetError(
            f"dataset {root}: {len(no_mask)} image(s) have no mask in {mask_dir} "
            f"(e.g. {', '.join(images[s].name for s in no_mask[:3])} needs {no_mask[0]}.png); "
            f"masks found: {_describe(mask_dir)}"
        )
    pairs = [(s, images[s], masks[s]) for s in sorted(images)]
    if check_sizes:
        for stem, ip, mp in pairs:
            try:
                with Image.open(ip) as im, Image.open(mp) as mk:
                    isize, msize = im.size, mk.size
            except OSError as exc:
                raise DatasetError(f"dataset {root}: cannot read {ip.name} or {mp.name}: {exc}") from None
            if isize != msize:
                raise DatasetError(
                    f"dataset {root}: image {ip.name} is {isize[0]}x{isize[1]} but its mask {mp.name} is "
                    f"{msize[0]}x{msize[1]} (width x height); they must match"
                )
    return pairs


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def read_index_mask(path: Path) -> np.ndarray:
    """uint8 index mask; palette PNGs give their indices, RGB masks are
    accepted only when grey (all channels equal)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P", "I", "I;16", "1"):
                arr = np.asarray(im)
            else:
                rgb = np.asarray(im.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise DatasetError(
                        f"mask {path} is a colour image (mode {im.mode}); masks must be single-channel index PNGs "
                        "with one integer per class (0 = background)"
                    )
                arr = rgb[..., 0]
    except OSError as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from None
    if arr.max(initial=0) > 255:
        raise DatasetError(f"mask {path} has class values above 255; expected uint8 indices")
    return arr.astype(np.uint8)


class ImageMaskFolder(torch.utils.data.Dataset):
    """Map-style dataset over an image_mask folder.

    Items: ``{"image": float32 tensor CxHxW in [0, 1], "mask": int64 HxW,
    "name": stem}``. ``size=(W, H)`` resizes (bilinear image, nearest mask)
    so batches stack; ``transform(item) -> item`` runs last (augmentation).
    """

    def __init__(
        self,
        root: PathLike,
        *,
        size: Optional[Tuple[int, int]] = None,
        transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
    ) -> None:
        self.root = Path(root)
        self.pairs = find_image_mask_pairs(self.root)
        self.size = tuple(int(v) for v in size) if size is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> List[str]:
        return [s for s, _, _ in self.pairs]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        stem, ip, mp = self.pairs[index]
        image = read_rgb(ip)
        mask = read_index_mask(mp)
        if image.shape[:2] != mask.shape[:2]:  # file changed since the layout check
            raise DatasetError(f"image {ip.name} and mask {mp.name} differ in size")
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = np.asarray(Image.fromarray(image).resize(self.size, Image.BILINEAR))
            mask = np.asarray(Image.fromarray(mask).resize(self.size, Image.NEAREST))
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "name": stem,
        }
        if self.transform is not None:
            item = self.transform(item)
        return item
