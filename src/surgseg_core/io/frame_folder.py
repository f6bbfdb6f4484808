"""Folders of numbered PNG/JPEG/TIFF/BMP frames, read with Pillow.

Frames are ordered by natural sort (frame_2 before frame_10). Datasets often
keep masks next to frames (``frame_561_endo.png`` and
``frame_561_endo_mask.png``): when a folder holds several numbered series we
refuse to guess and list them, and ``pattern="*_endo.png"`` picks one.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import VideoError
from .pixels import intensity_scale, resize_area, sample_positions, to_rgb8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _DIGITS.split(name)]


def list_frames(folder: Path, pattern: Optional[str] = None) -> List[Path]:
    if pattern:
        files = [p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise VideoError(f"{folder}: no image files match pattern {pattern!r}")
    else:
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".")]
        if not files:
            raise VideoError(f"{folder}: the folder holds no PNG/JPEG/TIFF/BMP frames")
        series = Counter(_DIGITS.sub("#", p.name) for p in files)
        if len(series) > 1:
            listed = ", ".join(f"{name!r} ({count} files)" for name, count in series.most_common(6))
            example = series.most_common(1)[0][0].replace("#", "*")
            raise VideoError(
                f"{folder}: the folder holds several image series: {listed}; choose one with "
                f"pattern={example!r} (or move the other files out)"
            )
    files = sorted(files, key=lambda p: natural_key(p.name))
    _warn_gaps(folder, files)
    return files


def _warn_gaps(folder: Path, files: List[Path]) -> None:
    """Frames are indexed 0..n-1 in file order: a gap in the file numbers
    (a missing or deleted frame) would silently shift every later frame's
    index against the video's timeline. A constant step (every 5th frame
    exported) is not a gap."""
    import warnings

    numbers = []
    for p in files:
        found = _DIGITS.findall(p.stem)
        if not found:
            return
        numbers.append(int(found[-1]))
    if len(numbers) < 3:
        return
    steps = np.diff(numbers)
    step = int(np.median(steps))
    if step <= 0 or np.all(steps == step):
        return
    expected = set(range(numbers[0], numbers[-1] + 1, step))
    missing = sorted(expected - set(numbers))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        warnings.warn(
            f"{folder}: frame numbers have gaps (missing {shown}; {len(missing)} in all): frames are indexed in "
            f"file order, so every frame after a gap has a smaller index than its number", UserWarning,
            stacklevel=3,
        )


def _load(path: Path, i: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
            return np.asarray(img)
    except VideoError:
        raise
    except Exception as exc:  # damaged images: PIL raises SyntaxError, struct.error, EOFError, ValueError, ...
        raise VideoError(f"{path}: frame {i} cannot be read ({exc.__class__.__name__}: {exc})") from exc


def check_sizes(files: List[Path]) -> Tuple[int, int]:
    """(width, height) shared by all frames; names the first file that differs."""
    from PIL import Image

    ref = None
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:  # reads the header only
                size = img.size
        except Exception as exc:  # a damaged header: OSError, ValueError ("Truncated IHDR chunk"), SyntaxError, ...
            raise VideoError(f"{path}: frame {i} is not a readable image ({exc})") from exc
        if ref is None:
            ref = size
        elif size != ref:
            raise VideoError(
                f"{path}: frame {i} is {size[0]}x{size[1]} but {files[0].name} is {ref[0]}x{ref[1]}; "
                "all frames of a folder must have the same size"
            )
    return ref


class FrameFolderReader:
    def __init__(self, files: List[Path], scale: Optional[float], out_size: Optional[Tuple[int, int]]):
        self.files, self.scale, self.out_size = files, scale, out_size

    def read(self, i: int) -> np.ndarray:
        frame = to_rgb8(_load(self.files[i], i), self.scale, f"{self.files[i]} (frame {i})")
        return resize_area(frame, self.out_size) if self.out_size else frame

    def close(self) -> None:
        pass


def open_frame_folder(folder: Path, pattern: Optional[str]) -> Tuple[List[Path], Tuple[int, int], Optional[float], str]:
    files = list_frames(folder, pattern)
    size = check_sizes(files)
    samples = [_load(files[k], k) for k in sample_positions(len(files), 4)]
    dtypes = {s.dtype for s in samples}
    if len(dtypes) > 1:
        raise VideoError(f"{folder}: frames mix pixel types {sorted(map(str, dtypes))}")
    scale = intensity_scale(folder, samples[0].dtype, samples)
    codec = files[0].suffix.lower().lstrip(".").replace("jpg", "jpeg")
    return files, size, scale, codec
