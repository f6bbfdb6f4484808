"""Multi-page TIFF stacks through tifffile.

Uncompressed contiguous stacks are memory-mapped (nothing read until a frame
is indexed); compressed ones are read page by page. Any leading axes (T, Z,
pages...) are flattened into the frame axis; the channel axis (S or C of
size 1, 3 or 4) goes last. Grayscale becomes RGB, RGBA loses its alpha and
16-bit/float data are rescaled to uint8 with a logged warning (see
:func:`surgseg_core.io.pixels.intensity_scale`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import VideoError
from .pixels import intensity_scale, resize_area, sample_positions, to_rgb8

log = logging.getLogger(__name__)


class TiffStack:
    """Layout of the first series of a TIFF and a way to read frame i (raw pixels)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(str(path))
        except Exception as exc:  # a damaged header raises whatever tifffile's parser hits
            raise VideoError(f"{path}: not a readable TIFF file ({exc.__class__.__name__}: {exc})") from exc
        try:
            # Damaged tags reach tifffile's series detection as any exception
            # (TypeError, ZeroDivisionError, ... found by tests/test_fuzz_readers.py).
            series = self._guard(lambda: self._tif.series[0], "not a readable TIFF file:", prefix=True)
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            self._guard(lambda: self._analyse(series, shape, axes, dtype), "not a readable TIFF file:", prefix=True)
        except BaseException:
            self._tif.close()
            raise

    def _analyse(self, series, shape, axes, dtype) -> None:
        import tifffile

        path = self.path
        self.dtype = dtype
        self.compression = str(getattr(series.keyframe, "compression", "")).split(".")[-1].lower()
        if "Y" not in axes or "X" not in axes:
            raise VideoError(f"{path}: TIFF series has axes {axes!r}; no image (Y, X) axes found")
        chan = [a for a in ("S", "C") if a in axes and shape[axes.index(a)] > 1]
        if len(chan) > 1 or (chan and shape[axes.index(chan[0])] > 4):
            sizes = ", ".join(f"{a}={shape[axes.index(a)]}" for a in chan)
            raise VideoError(f"{path}: TIFF with {sizes} channels (axes {axes!r}) is not supported; "
                             "need grayscale, RGB or RGBA frames")
        chan = chan or [a for a in ("S", "C") if a in axes]
        # Every axis that is not Y, X or the channel axis counts as "frames" (C order).
        self._frame_axes = [axes.index("Y"), axes.index("X")] + ([axes.index(chan[0])] if chan else [])
        self._other_axes = [k for k in range(len(axes)) if k not in self._frame_axes]
        self._other_shape = tuple(shape[k] for k in self._other_axes)
        self.n_frames = int(np.prod(self._other_shape)) if self._other_shape else 1
        self.height, self.width = shape[axes.index("Y")], shape[axes.index("X")]
        self.frame_shape = (self.height, self.width) + ((shape[axes.index(chan[0])],) if chan else ())
        if self.n_frames == 0:
            raise VideoError(f"{path}: the TIFF holds zero frames")
        self._array = None
        self._pages = None
        try:
            mm = tifffile.memmap(str(path), series=0, mode="r") if series.dataoffset is not None else None
        except (ValueError, OSError, TypeError):  # not contiguous/uncompressed after all
            mm = None
        if mm is not None:
            self._array = mm
        else:
            pages = list(series.pages)
            page_axes = series.keyframe.axes
            if len(pages) == self.n_frames and set(page_axes) <= set("YXS"):
                self._pages, self._page_axes = pages, page_axes
            elif series.nbytes <= 512 * 2**20:
                self._array = self._guard(lambda: series.asarray(), "reading the stack")
            else:
                raise VideoError(f"{path}: compressed TIFF with axes {axes!r} cannot be read frame by frame; "
                                 "save it as one page per frame")
        self.fps = self._imagej_fps()

    def _guard(self, fn, what: str, prefix: bool = False):
        try:
            return fn()
        except VideoError:
            raise
        except Exception as exc:  # tifffile/codec errors come in many types
            said = f"{what} {exc.__class__.__name__}: {exc}" if prefix else \
                f"{what} failed ({exc.__class__.__name__}: {exc})"
            raise VideoError(f"{self.path}: {said}") from exc

    def _imagej_fps(self) -> Optional[float]:
        meta = self._tif.imagej_metadata or {}
        try:
            if meta.get("finterval"):
                return 1.0 / float(meta["finterval"])
            if meta.get("fps"):
                return float(meta["fps"])
        except (TypeError, ValueError, ZeroDivisionError):
            pass
        return None

    def _frame_of(self, array: np.ndarray, i: int) -> np.ndarray:
        # Index the frame axes directly: reshaping a transposed memmap would copy the whole file.
        key = [slice(None)] * array.ndim
        for axis, value in zip(self._other_axes, np.unravel_index(i, self._other_shape)):
            key[axis] = int(value)
        remaining = [k for k in range(array.ndim) if k not in self._other_axes]
        return np.asarray(array[tuple(key)].transpose([remaining.index(k) for k in self._frame_axes]))

    def raw(self, i: int) -> np.ndarray:
        if self._array is not None:
            return self._guard(lambda: self._frame_of(self._array, i), f"reading frame {i}")
        page = self._pages[i]
        a = self._guard(page.asarray, f"reading frame {i}")
        if self._page_axes.startswith("S"):  # planar RGB page
            a = np.moveaxis(a, 0, -1)
        return a

    def close(self) -> None:
        self._array = None  # drops the memory map
        self._tif.close()


class TiffReader:
    def __init__(self, stack: TiffStack, scale: Optional[float], out_size: Optional[Tuple[int, int]]):
        self.stack, self.scale, self.out_size = stack, scale, out_size

    def read(self, i: int) -> np.ndarray:
        frame = to_rgb8(self.stack.raw(i), self.scale, f"{self.stack.path} frame {i}")
        return resize_area(frame, self.out_size) if self.out_size else frame

    def close(self) -> None:
        self.stack.close()


def open_tiff(path: Path) -> Tuple[TiffStack, Optional[float]]:
    stack = TiffStack(path)
    try:
        scale = intensity_scale(path, stack.dtype, [stack.raw(k) for k in sample_positions(stack.n_frames)])
        to_rgb8(stack.raw(0), scale, f"{path} frame 0")  # channel layout check
    except BaseException:
        stack.close()
        raise
    return stack, scale
