"""Write and read back what users make: label masks, points and overlay videos.

Formats (all written atomically, so an interrupted save never leaves a
half-written file in place of a good one):

* labels -> one compressed (zlib/deflate) multi-page TIFF, one page per frame
  (``(T, H, W)``; a 2D label image is one page). The array shape is kept in the
  TIFF description so :func:`read_labels_tiff` returns exactly what was saved.
* labels -> a folder of numbered PNG masks ``000000.png, 000001.png, ...``,
  ``uint8`` when the largest id is <= 255, else ``uint16`` (PNG has no wider
  integer type, so ids above 65535 or below 0 are refused).
* points -> CSV with the header ``frame,x,y`` followed by one column per point
  feature (e.g. ``label``). ``x`` is the column index and ``y`` the row index in
  pixels, ``frame`` the 0-based frame of the (opened) video. This is the one
  convention of the project; napari stores points as ``(t, y, x)``, the
  functions here convert. 2D points (no time axis) are written without the
  ``frame`` column.
* overlay -> H.264 MP4 (yuv420p) with label colours blended in and points drawn,
  streamed one frame at a time through imageio-ffmpeg.
"""
from __future__ import annotations

import colorsys
import csv
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError, VideoError
from ..progress import CancelToken, ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Marker stored in the TIFF description of label stacks written here, so the
#: napari reader opens them as a Labels layer instead of as a video.
LABELS_TIFF_MARKER = "surgseg-labels"

_PNG_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)")


# --------------------------------------------------------------------------
# Labels: validation and frame access
# --------------------------------------------------------------------------


def _check_labels(labels: Any, what: str = "labels") -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape/dtype checks shared by the writers; returns (shape, dtype)."""
    shape = tuple(int(s) for s in getattr(labels, "shape", ()))
    if len(shape) not in (2, 3):
        raise DatasetError(
            f"{what}: expected a 2D (H, W) or 3D (T, H, W) label array, got shape {shape or 'none'}"
            " (labels with extra dimensions, e.g. channels or z-stacks, cannot be exported)"
        )
    if 0 in shape:
        raise DatasetError(f"{what}: label array is empty (shape {shape})")
    dtype = np.dtype(getattr(labels, "dtype", np.asarray(labels[(0,) * (len(shape) - 1)]).dtype))
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if dtype.kind not in "iu":
        raise DatasetError(f"{what}: labels must be integers, got dtype {dtype}")
    return shape, dtype


def _label_frames(labels: Any, shape: Tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yield (H, W) frames one at a time (works on lazy arrays)."""
    if len(shape) == 2:
        yield np.asarray(labels).astype(dtype, copy=False)
        return
    for t in range(shape[0]):
        yield np.asarray(labels[t]).astype(dtype, copy=False)


# --------------------------------------------------------------------------
# Labels <-> compressed multi-page TIFF
# --------------------------------------------------------------------------


def write_labels_tiff(
    labels: Any,
    path: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Save a (T, H, W) or (H, W) integer label array as a zlib-compressed
    multi-page TIFF (one page per frame), written atomically.

    ``labels`` may be lazy (anything with ``shape``, ``dtype`` and per-frame
    indexing); frames are compressed one at a time.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DatasetError(f"{path}: label stacks are saved as .tif or .tiff, not '{path.suffix or 'no extension'}'")
    shape, dtype = _check_labels(labels, f"labels for {path.name}")
    n = 1 if len(shape) == 2 else shape[0]

    def pages() -> Iterator[np.ndarray]:
        for t, frame in enumerate(_label_frames(labels, shape, dtype)):
            check_cancel(cancel)
            yield np.ascontiguousarray(frame)
            report(progress, t + 1, n, "writing TIFF")

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as tif:
            tif.write(
                pages(),
                shape=shape,
                dtype=dtype,
                compression="zlib",
                photometric="minisblack",
                metadata={"surgseg": LABELS_TIFF_MARKER},
            )
    log.info("wrote %d label frame(s) to %s", n, path)
    return path


class LabelsTiffStack:
    """Lazy read-only view of a label TIFF: ``stack[t]`` decodes one page.

    Keeps memory flat when exporting overlays of long videos.
    """

    def __init__(self, path: PathLike) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
        except Exception as exc:  # tifffile raises several types for bad files
            raise DatasetError(f"{self.path}: cannot read as a TIFF label stack ({exc})") from exc
        shape = tuple(int(s) for s in series.shape)
        if len(shape) not in (2, 3):
            self._tif.close()
            raise DatasetError(f"{self.path}: expected (T, H, W) or (H, W) labels, found shape {shape}")
        self.shape = shape
        self.dtype = np.dtype(series.dtype)
        self.ndim = len(shape)
        self._pages = series.pages

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if self.ndim == 2:
            return self._pages[0].asarray()[index]
        if isinstance(index, tuple):
            first, rest = index[0], index[1:]
        else:
            first, rest = index, ()
        if isinstance(first, (int, np.integer)):
            t = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= t < self.shape[0]:
                raise IndexError(f"frame {first} out of range for {self.shape[0]} frames")
            page = self._pages[t].asarray()
            return page[rest] if rest else page
        frames = range(self.shape[0])[first]
        data = np.stack([self._pages[t].asarray() for t in frames]) if len(frames) else np.zeros(
            (0,) + self.shape[1:], self.dtype
        )
        return data[(slice(None),) + rest] if rest else data

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data.astype(dtype) if dtype is not None else data

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "LabelsTiffStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_labels_tiff(path: PathLike) -> bool:
    """True when ``path`` is a label stack written by :func:`write_labels_tiff`."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            desc = tif.pages[0].description or ""
    except Exception:
        return False
    return LABELS_TIFF_MARKER in desc


def read_labels_tiff(path: PathLike) -> np.ndarray:
    """Read a label TIFF back into memory with the shape and dtype it was
    saved with (use :class:`LabelsTiffStack` for lazy per-frame access)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label TIFF not found")
    with LabelsTiffStack(path) as stack:
        data = np.asarray(stack[:]) if stack.ndim == 3 else stack._pages[0].asarray()
    return data.reshape(stack.shape)


# --------------------------------------------------------------------------
# Labels <-> folder of numbered PNG masks
# --------------------------------------------------------------------------


def png_mask_files(folder: PathLike) -> list[Path]:
    """Numbered PNG files in ``folder`` sorted by their number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: mask folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png" and _NUMBER.search(p.stem)]
    if not files:
        raise DatasetError(f"{folder}: no numbered PNG masks (expected 000000.png, 000001.png, ...)")
    return sorted(files, key=lambda p: (int(_NUMBER.findall(p.stem)[-1]), p.name))


def _read_png_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read PNG mask ({exc})") from exc
    if arr.ndim == 3:
        # Some datasets store class ids as RGB with R == G == B.
        if arr.shape[2] in (3, 4) and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
            arr[..., 0], arr[..., 2]
        ):
            arr = arr[..., 0]
        else:
            raise DatasetError(f"{path}: colour PNG is not a label mask (expected one channel of class ids)")
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"{path}: mask pixels must be integers, got {arr.dtype}")
    return arr


class PngMaskStack:
    """Lazy (T, H, W) view of a folder of numbered PNG masks."""

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.files = png_mask_files(self.folder)
        first = _read_png_mask(self.files[0])
        self.shape = (len(self.files),) + first.shape
        self.dtype = first.dtype
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def _frame(self, t: int) -> np.ndarray:
        arr = _read_png_mask(self.files[t])
        if arr.shape != self.shape[1:]:
            raise DatasetError(
                f"{self.files[t]}: mask size {arr.shape} differs from {self.files[0].name} {self.shape[1:]}"
            )
        return arr.astype(self.dtype, copy=False)

    def __getitem__(self, index):
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, (int, np.integer)):
            t = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= t < self.shape[0]:
                raise IndexError(f"frame {first} out of range for {self.shape[0]} frames")
            frame = self._frame(t)
            return frame[rest] if rest else frame
        frames = range(self.shape[0])[first]
        data = np.stack([self._frame(t) for t in frames]) if len(frames) else np.zeros((0,) + self.shape[1:], self.dtype)
        return data[(slice(None),) + rest] if rest else data

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data.astype(dtype) if dtype is not None else data


def write_png_masks(
    labels: Any,
    folder: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Save labels as ``folder/000000.png, 000001.png, ...`` (one per frame).

    The folder is built next to the target and renamed into place at the end,
    so a failed or cancelled export leaves any earlier export untouched. An
    existing target folder is replaced only if it holds nothing but numbered
    PNGs (an earlier export); otherwise it is refused rather than deleted.
    """
    from PIL import Image

    folder = Path(folder)
    shape, dtype = _check_labels(labels, f"labels for {folder.name}")
    n = 1 if len(shape) == 2 else shape[0]
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder}: exists and is not a folder")
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir() if not _PNG_NAME.match(p.name)]
        if foreign:
            raise DatasetError(
                f"{folder}: folder already holds other files ({', '.join(sorted(foreign)[:3])}); "
                "choose an empty or new folder for PNG masks"
            )

    # First pass: value range decides uint8 vs uint16 (cheap on in-memory labels).
    lo, hi = 0, 0
    for frame in _label_frames(labels, shape, dtype):
        check_cancel(cancel)
        lo, hi = min(lo, int(frame.min())), max(hi, int(frame.max()))
    if lo < 0:
        raise DatasetError(f"labels for {folder.name}: negative label id {lo} cannot be stored in a PNG mask")
    if hi > 65535:
        raise DatasetError(
            f"labels for {folder.name}: label id {hi} is above 65535, the PNG limit; save as TIFF instead"
        )
    out_dtype = np.uint8 if hi <= 255 else np.uint16
    digits = max(6, len(str(n - 1)))

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for t, frame in enumerate(_label_frames(labels, shape, dtype)):
            check_cancel(cancel)
            Image.fromarray(np.ascontiguousarray(frame.astype(out_dtype))).save(tmp / f"{t:0{digits}d}.png")
            report(progress, t + 1, n, "writing PNG masks")
        old = None
        if folder.is_dir():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d PNG mask(s) (%s) to %s", n, np.dtype(out_dtype).name, folder)
    return folder


def read_png_masks(folder: PathLike) -> np.ndarray:
    """Read a folder of numbered PNG masks into a (T, H, W) array."""
    return np.asarray(PngMaskStack(folder)[:])


def open_labels(path: PathLike):
    """Lazy label stack from a label TIFF or a folder of numbered PNG masks."""
    path = Path(path)
    if path.is_dir():
        return PngMaskStack(path)
    if not path.exists():
        raise DatasetError(f"{path}: labels not found")
    if path.suffix.lower() in (".tif", ".tiff"):
        return LabelsTiffStack(path)
    raise DatasetError(f"{path}: labels must be a .tif/.tiff stack or a folder of numbered PNG masks")


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
) -> Path:
    """Save points (napari order: (N, 3) ``(t, y, x)`` or (N, 2) ``(y, x)``)
    as CSV ``frame,x,y[,feature...]`` (see module docstring), atomically.

    ``features`` is a mapping or pandas DataFrame of per-point columns.
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
    coord_idx = {lower.index("x"), lower.index("y")} | ({frame_col} if frame_col is not None else set())
    features = {h: _parse_column(columns[h]) for j, h in enumerate(header) if j not in coord_idx}
    return PointsTable(data=data, features=features)


# --------------------------------------------------------------------------
# Overlay video
# --------------------------------------------------------------------------


def default_label_color(label: int) -> Tuple[int, int, int]:
    """A stable, well-separated RGB colour for a label id (golden-ratio hue
    steps: neighbouring ids get clearly different colours, the same id always
    the same colour across frames and exports)."""
    hue = (0.12 + 0.618033988749895 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _to_rgb255(color: Any) -> np.ndarray:
    c = np.asarray(color, dtype=float).ravel()[:3]
    if c.size != 3:
        raise DatasetError(f"colour {color!r} is not an RGB triple")
    if c.max() <= 1.0:
        c = c * 255.0
    return np.clip(c, 0, 255)


def _frame_rgb(frame: Any) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise VideoError(f"video frame has shape {arr.shape}; expected (H, W, 3) RGB or (H, W) grey")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def _video_geometry(video: Any) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in video.shape)
    if len(shape) == 4 and shape[-1] in (3, 4):
        return shape[0], shape[1], shape[2]
    if len(shape) == 3 and shape[-1] not in (3, 4):
        return shape[0], shape[1], shape[2]
    if len(shape) == 3:  # one RGB image
        return 1, shape[0], shape[1]
    raise VideoError(f"video has shape {shape}; expected (T, H, W, 3) RGB frames")


def _iter_video(video: Any, n: int, single: bool) -> Iterator[np.ndarray]:
    if single:
        yield np.asarray(video)
        return
    iter_frames = getattr(video, "iter_frames", None)
    if callable(iter_frames):  # FrameSource: sequential decoder of its own, yields (index, frame)
        for _, frame in iter_frames():
            yield frame
        return
    for t in range(n):
        yield video[t]


def _load_points(points: Any) -> Optional[np.ndarray]:
    if points is None:
        return None
    if isinstance(points, (str, os.PathLike)):
        points = read_points_csv(points).data
    elif isinstance(points, PointsTable):
        points = points.data
    data = np.asarray(points, dtype=float)
    if data.size == 0:
        return None
    if data.ndim != 2 or data.shape[1] not in (2, 3):
        raise DatasetError(f"points: expected (N, 3) (frame, y, x) or (N, 2) (y, x), got shape {data.shape}")
    return data


def _points_by_frame(data: Optional[np.ndarray], n_frames: int) -> Dict[int, np.ndarray]:
    """{frame: row indices into ``data``}; key -1 holds 2D points shown on every frame."""
    if data is None:
        return {}
    if data.shape[1] == 2:
        return {-1: np.arange(len(data))}
    frames = np.round(data[:, 0]).astype(int)
    out_of_range = (frames < 0) | (frames >= n_frames)
    if out_of_range.any():
        log.warning("%d point(s) lie outside frames 0..%d and are not drawn", int(out_of_range.sum()), n_frames - 1)
    return {int(f): np.flatnonzero(frames == f) for f in np.unique(frames[~out_of_range])}


def _point_colors(point_color: Any, n: int) -> np.ndarray:
    """(n, 3) uint8 colours from one colour or one colour per point."""
    arr = np.asarray(point_color, dtype=float)
    if arr.ndim == 2:
        if len(arr) != n or arr.shape[1] not in (3, 4):
            raise DatasetError(f"point colours have shape {arr.shape}, expected ({n}, 3) or one RGB colour")
        scale = 255.0 if arr[:, :3].max(initial=0) <= 1.0 else 1.0
        return np.clip(arr[:, :3] * scale, 0, 255).astype(np.uint8)
    return np.repeat(_to_rgb255(arr)[None].astype(np.uint8), n, axis=0)


class _LabelPainter:
    """Blend label colours into frames through a lookup table."""

    def __init__(self, colors: Any, alpha: float) -> None:
        self.alpha = float(alpha)
        if callable(colors):
            self._lookup = colors
            self.colors: Dict[int, np.ndarray] = {}
        else:
            self._lookup = None
            self.colors = {int(k): _to_rgb255(v) for k, v in (colors or {}).items()}
        self._lut = np.zeros((1, 3), dtype=float)

    def _color(self, label: int) -> np.ndarray:
        if label in self.colors:
            return self.colors[label]
        if self._lookup is not None:
            color = self._lookup(label)
            if color is not None:
                return _to_rgb255(color)
        return np.asarray(default_label_color(label), dtype=float)

    def paint(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        mask = labels > 0  # 0 is background, never painted
        if not mask.any():
            return frame
        ids = labels[mask]
        top = int(ids.max())
        if top < 1 << 20:
            if top >= len(self._lut):
                old = len(self._lut)
                self._lut = np.concatenate([self._lut, np.zeros((top + 1 - old, 3))])
                for i in range(max(old, 1), top + 1):
                    self._lut[i] = self._color(i)
            color = self._lut[ids]
        else:  # huge ids (instance labels): colour only the ids present
            uniq, inv = np.unique(ids, return_inverse=True)
            color = np.stack([self._color(int(u)) for u in uniq])[inv]
        out = frame.copy()
        out[mask] = np.clip(frame[mask] * (1.0 - self.alpha) + color * self.alpha + 0.5, 0, 255).astype(np.uint8)
        return out


def _draw_points(frame: np.ndarray, yx: np.ndarray, radius: float, colors: np.ndarray) -> None:
    from skimage.draw import disk

    h, w = frame.shape[:2]
    for (y, x), color in zip(yx, colors):
        # dark rim so points stay visible on bright tissue and on the label colours
        rr, cc = disk((y, x), radius + 1.5, shape=(h, w))
        frame[rr, cc] = 0
        rr, cc = disk((y, x), radius, shape=(h, w))
        frame[rr, cc] = color


def export_overlay_video(
    video: Any,
    out_path: PathLike,
    *,
    labels: Any = None,
    points: Any = None,
    colors: Union[Mapping[int, Any], Callable[[int], Any], None] = None,
    alpha: float = 0.5,
    fps: Optional[float] = None,
    point_radius: float = 4.0,
    point_color: Any = (255, 255, 0),
    quality: int = 7,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write ``video`` with label colours and points drawn on as an H.264 MP4.

    video: a path (opened lazily with :func:`surgseg_core.io.open_video`) or an
        array-like (T, H, W, 3) / (T, H, W); frames are read one at a time.
    labels: (T, H, W) array-like indexed per frame (lazy is fine), a (H, W)
        array drawn on every frame, or a path to a label TIFF / PNG folder.
    points: (N, 3) array of (frame, y, x), (N, 2) of (y, x) drawn on every
        frame, or a points CSV path (``frame,x,y``).
    colors: {label id: RGB (0-255 or 0-1)} or a function id -> RGB (e.g. the
        napari layer's colours); other ids get :func:`default_label_color`.
    point_color: one RGB colour or one per point (N, 3|4).
    fps: output frame rate; default keeps real time: the video's own rate
        divided by the stride it was opened with (``metadata.fps / step``),
        or 25 when the source has no timing.

    yuv420p needs even width and height: odd sizes are padded by one row/column
    (edge pixels repeated) instead of resizing, so drawn pixels stay in place.
    The file is written to a temporary name and renamed at the end; on error
    or cancel nothing is left at ``out_path``.
    """
    import imageio_ffmpeg

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".mp4":
        raise VideoError(f"{out_path}: overlay videos are written as .mp4")
    if not 0.0 <= float(alpha) <= 1.0:
        raise VideoError(f"alpha must be between 0 and 1, got {alpha}")

    opened = None
    if isinstance(video, (str, os.PathLike)):
        from . import open_video

        video = opened = open_video(video)
    labels_opened = None
    try:
        n, h, w = _video_geometry(video)
        single = len(video.shape) == 3 and video.shape[-1] in (3, 4)
        if fps is None:
            meta = getattr(video, "metadata", None)
            src_fps = getattr(meta, "fps", None) if meta is not None else None
            step = max(1, int(getattr(meta, "step", 1) or 1))
            fps = float(src_fps) / step if src_fps else 25.0
        if fps <= 0:
            raise VideoError(f"fps must be positive, got {fps}")

        if isinstance(labels, (str, os.PathLike)):
            labels = labels_opened = open_labels(labels)
        if labels is not None:
            lshape = tuple(int(s) for s in labels.shape)
            if len(lshape) not in (2, 3) or lshape[-2:] != (h, w):
                raise DatasetError(f"labels of shape {lshape} do not match video frames of size {h}x{w} (H x W)")
            if len(lshape) == 3 and lshape[0] != n:
                raise DatasetError(f"labels have {lshape[0]} frames but the video has {n}")
        pdata = _load_points(points)
        by_frame = _points_by_frame(pdata, n)
        every_frame = by_frame.pop(-1, None)
        pcolors = _point_colors(point_color, 0 if pdata is None else len(pdata))
        painter = _LabelPainter(colors, alpha)

        pad_h, pad_w = h % 2, w % 2
        if pad_h or pad_w:
            log.info("padding %dx%d frames to %dx%d for yuv420p", w, h, w + pad_w, h + pad_h)
        with atomic_path(out_path) as tmp:
            writer = imageio_ffmpeg.write_frames(
                str(tmp),
                (w + pad_w, h + pad_h),
                fps=fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                quality=quality,
                macro_block_size=1,
                ffmpeg_log_level="error",
            )
            writer.send(None)
            try:
                done = 0
                for t, frame in enumerate(_iter_video(video, n, single)):
                    check_cancel(cancel)
                    rgb = _frame_rgb(frame)
                    if rgb.shape[:2] != (h, w):
                        raise VideoError(f"frame {t} has size {rgb.shape[:2]}, expected {(h, w)}")
                    if labels is not None:
                        lab = np.asarray(labels if len(labels.shape) == 2 else labels[t])
                        rgb = painter.paint(rgb, lab)
                    pts = by_frame.get(t)
                    if pts is not None or every_frame is not None:
                        rgb = rgb.copy() if not rgb.flags.writeable else rgb
                        for rows in (every_frame, pts):
                            if rows is not None:
                                _draw_points(rgb, pdata[rows, -2:], point_radius, pcolors[rows])
                    if pad_h or pad_w:
                        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                    writer.send(np.ascontiguousarray(rgb))
                    done = t + 1
                    report(progress, done, n, "writing overlay video")
                    if done >= n:
                        break
            finally:
                writer.close()
            if done == 0:
                raise VideoError("the video has no frames to export")
    finally:
        if opened is not None:
            opened.close()
        if labels_opened is not None and hasattr(labels_opened, "close"):
            labels_opened.close()
    log.info("wrote overlay video %s (%d frames, %.3g fps)", out_path, done, fps)
    return out_path
