"""Label masks on disk: compressed multi-page TIFF stacks and folders of
numbered PNG masks, written atomically, read back exactly (or lazily, one frame
at a time). Formats are described in :mod:`surgseg_core.io.export`."""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError
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
    provenance: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Save a (T, H, W) or (H, W) integer label array as a zlib-compressed
    multi-page TIFF (one page per frame), written atomically.

    ``labels`` may be lazy (anything with ``shape``, ``dtype`` and per-frame
    indexing); frames are compressed one at a time. ``provenance``
    (:func:`surgseg_core.provenance.build_provenance`) goes into the TIFF
    description (JSON, key ``"provenance"``).
    """
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

    _write_pages(pages(), path, shape, dtype, provenance)
    log.info("wrote %d label frame(s) to %s", n, path)
    return path


def _write_pages(pages: Iterator[Any], path: Path, shape: Tuple[int, ...], dtype: np.dtype,
                 provenance: Optional[Mapping[str, Any]]) -> None:
    """Write frames (arrays, or zlib-compressed bytes of whole frames:
    :func:`compressed_frame`) atomically, one zlib strip per frame, so a
    later write can copy an unchanged frame's strip as it is
    (:class:`FrameStrips`)."""
    import tifffile

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp) as tif:
            tif.write(
                pages,
                shape=shape,
                dtype=dtype,
                compression="zlib",
                rowsperstrip=shape[-2],
                photometric="minisblack",
                metadata={"surgseg": LABELS_TIFF_MARKER, **_provenance_metadata(provenance)},
            )


def compressed_frame(frame: np.ndarray) -> bytes:
    """One (H, W) frame as the zlib strip :func:`write_labels_tiff` writes."""
    import zlib

    return zlib.compress(np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<"), copy=False).tobytes(), 6)


def write_labels_tiff_frames(frames: Iterator[Union[np.ndarray, bytes]], path: PathLike, shape: Tuple[int, ...],
                             dtype: Any, *, provenance: Optional[Mapping[str, Any]] = None) -> Path:
    """:func:`write_labels_tiff` from an iterator of frames, each an (H, W)
    array or the compressed strip of one (:func:`compressed_frame`, or an
    unchanged frame's strip of an earlier file, :class:`FrameStrips`): an autosave
    rewrites only the frames that changed."""
    path = Path(path)
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    if len(shape) != 3:
        raise DatasetError(f"{path.name}: frame-wise writing needs a (T, H, W) shape, got {shape}")

    def pages() -> Iterator[bytes]:
        for frame in frames:
            yield frame if isinstance(frame, bytes) else compressed_frame(np.asarray(frame).astype(dtype, copy=False))

    _write_pages(pages(), path, shape, dtype, provenance)
    log.info("wrote %d label frame(s) to %s", shape[0], path)
    return path


class FrameStrips:
    """The compressed strip of each frame of a TIFF that
    :func:`write_labels_tiff` wrote, for copying unchanged frames into a new
    file; ``None`` from :meth:`open` when the file is not laid out that way
    (another writer, another shape or type)."""

    def __init__(self, tif) -> None:
        self._tif = tif
        self._pages = tif.series[0].pages

    @classmethod
    def open(cls, path: PathLike, shape: Tuple[int, ...], dtype: Any) -> Optional["FrameStrips"]:
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception:
            return None
        try:
            series = tif.series[0]
            pages = series.pages
            ok = (tuple(series.shape) == tuple(shape) and np.dtype(series.dtype) == np.dtype(dtype)
                  and tif.byteorder == "<"
                  and series.keyframe.compression == 8 and series.keyframe.predictor == 1  # zlib, no predictor
                  and all(len(p.dataoffsets) == 1 for p in pages))
        except Exception:
            ok = False
        if not ok:
            tif.close()
            return None
        return cls(tif)

    def __getitem__(self, t: int) -> bytes:
        page = self._pages[t]
        fh = self._tif.filehandle
        fh.seek(page.dataoffsets[0])
        return fh.read(page.databytecounts[0])

    def close(self) -> None:
        self._tif.close()


def _provenance_metadata(provenance: Optional[Mapping[str, Any]]) -> dict:
    if provenance is None:
        return {}
    import json

    return {"provenance": json.loads(json.dumps(dict(provenance), default=str))}


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


def read_labels_tiff(path: PathLike, *, max_ram_mb: Optional[float] = None) -> np.ndarray:
    """Read a label TIFF back with the shape and dtype it was saved with, as
    a writable array: into memory, or with ``max_ram_mb`` a stack larger
    than that frame by frame into a memory-mapped
    :func:`~surgseg_core.io.label_stack.new_label_stack` (a long video's
    masks are never all in RAM). :class:`LabelsTiffStack` reads lazily."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label TIFF not found")
    with LabelsTiffStack(path) as stack:
        if stack.ndim == 3 and max_ram_mb is not None:
            return _into_label_stack(stack, path.stem, max_ram_mb)
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
    files = [
        p
        for p in folder.iterdir()
        # hidden names are temp files of an atomic write in progress
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png" and _NUMBER.search(p.stem)
    ]
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
    provenance: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Save labels as ``folder/000000.png, 000001.png, ...`` (one per frame),
    with ``provenance`` (when given) in ``folder/provenance.json``.

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
        foreign = [p.name for p in folder.iterdir() if not _PNG_NAME.match(p.name) and p.name != "provenance.json"]
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
    # mkdir (not mkdtemp, which makes 0700 folders) so the result has the usual permissions
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for t, frame in enumerate(_label_frames(labels, shape, dtype)):
            check_cancel(cancel)
            Image.fromarray(np.ascontiguousarray(frame.astype(out_dtype))).save(tmp / f"{t:0{digits}d}.png")
            report(progress, t + 1, n, "writing PNG masks")
        if provenance is not None:
            from ..provenance import FOLDER_FILE, dumps

            (tmp / FOLDER_FILE).write_text(dumps(provenance) + "\n", encoding="utf-8")
        old = None
        if folder.is_dir():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d PNG mask(s) (%s) to %s", n, np.dtype(out_dtype).name, folder)
    return folder


def read_png_masks(folder: PathLike, *, max_ram_mb: Optional[float] = None) -> np.ndarray:
    """Read a folder of numbered PNG masks into a (T, H, W) array (with
    ``max_ram_mb``: memory-mapped when larger, as :func:`read_labels_tiff`)."""
    stack = PngMaskStack(folder)
    if max_ram_mb is None:
        return np.asarray(stack[:])
    return _into_label_stack(stack, Path(folder).name, max_ram_mb)


def _into_label_stack(stack: Any, name: str, max_ram_mb: float) -> np.ndarray:
    """Frame by frame into a :func:`~surgseg_core.io.label_stack.new_label_stack`."""
    from .label_stack import new_label_stack

    data = new_label_stack(stack.shape, stack.dtype, name=name, max_ram_mb=max_ram_mb)
    for t in range(stack.shape[0]):
        data[t] = stack[t]
    return data


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
