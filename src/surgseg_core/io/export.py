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

This module is the one import for all of it (napari writers, export widget,
``surgseg export``); the code lives in ``labels_io``, ``points_csv`` and
``overlay`` next to it.
"""
from __future__ import annotations

from .labels_io import (
    LABELS_TIFF_MARKER,
    LabelsTiffStack,
    PngMaskStack,
    is_labels_tiff,
    open_labels,
    png_mask_files,
    read_labels_tiff,
    read_png_masks,
    write_labels_tiff,
    write_png_masks,
)
from .overlay import default_label_color, export_overlay_video
from .points_csv import PointsTable, read_points_csv, write_points_csv

__all__ = [
    "LABELS_TIFF_MARKER",
    "LabelsTiffStack",
    "PngMaskStack",
    "PointsTable",
    "default_label_color",
    "export_overlay_video",
    "is_labels_tiff",
    "open_labels",
    "png_mask_files",
    "read_labels_tiff",
    "read_png_masks",
    "read_points_csv",
    "write_labels_tiff",
    "write_png_masks",
    "write_points_csv",
]
