"""npe2 reader: surgical videos, RGB TIFF stacks and folders of numbered
frames open as one lazy RGB image layer with a ``t`` axis.

Label stacks written by this plugin (TIFF with our marker, or folders of
numbered single-channel PNG masks) open as Labels layers and points CSVs
(``frame,x,y,...``) as Points layers, so a save/open round trip gives back
what was saved. Anything else returns ``None`` (napari's
convention: another reader may take it). A file with a video extension that
cannot be decoded raises a :class:`VideoError` naming the file and the problem.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
from surgseg_core.io.open import VIDEO_SUFFIXES  # one list for every place that opens videos

from .widgets.base.layers import announce_video, labels_layer_data, points_layer_data, video_layer_data

TIFF_SUFFIXES = {".tif", ".tiff"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg"}
_DIGITS = re.compile(r"\d")
# PIL modes of one-channel images: class-id masks, not video frames.
_MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L"}

PathOrPaths = Union[str, List[str]]


def get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], list]]:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:  # several files: let napari stack or pick another reader
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        frames = _numbered_frames(p)
        if not frames:
            return None
        return _read_masks_folder if _is_mask_image(frames[0]) else _read_video
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return _read_video
    if suffix == ".csv":
        return _read_points_csv if _is_points_csv(p) else None
    if suffix in TIFF_SUFFIXES:
        kind = _tiff_kind(p)
        if kind == "labels":
            return _read_labels_tiff
        if kind == "other":
            return None
        return _read_video  # RGB stack, or broken: open_video raises a clear error
    return None


def _numbered_frames(folder: Path) -> list:
    try:
        return sorted(
            f
            for f in folder.iterdir()
            if f.is_file()
            and not f.name.startswith(".")
            and f.suffix.lower() in FRAME_SUFFIXES
            and _DIGITS.search(f.stem)
        )
    except OSError:
        return []


def _is_mask_image(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode in _MASK_MODES
    except Exception:
        return False


def _tiff_kind(path: Path) -> str:
    """'labels' (ours), 'video' (RGB pages), 'other' (e.g. grey microscopy
    stacks, left to other readers) or 'broken'."""
    from surgseg_core.io.export import LABELS_TIFF_MARKER

    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if LABELS_TIFF_MARKER in (page.description or ""):
                return "labels"
            return "video" if page.samplesperpixel in (3, 4) else "other"
    except Exception:
        return "broken"


def _is_points_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            header = {h.strip().lower() for h in fh.readline().split(",")}
    except (OSError, UnicodeDecodeError):
        return False
    return {"x", "y"} <= header


def _single(path: PathOrPaths) -> str:
    return path[0] if isinstance(path, (list, tuple)) else path


def _read_video(path: PathOrPaths) -> list:
    from surgseg_core.io import open_video

    from .widgets.base.layers import PLAYBACK_PREFETCH

    source = open_video(_single(path), prefetch=PLAYBACK_PREFETCH)  # lazy: reads metadata, not frames
    announce_video(source)
    return [video_layer_data(source)]


def _read_labels_tiff(path: PathOrPaths) -> list:
    from surgseg_core.io.export import read_labels_tiff
    from surgseg_core.io.label_stack import DEFAULT_MAX_RAM_MB

    p = Path(_single(path))
    # a long video's masks are memory-mapped, not read into RAM (and stay paintable)
    data = read_labels_tiff(p, max_ram_mb=DEFAULT_MAX_RAM_MB)
    _autosave_corrections()
    return [_placed(labels_layer_data(data, p.stem, _saved_metadata(p)))]


def _autosave_corrections() -> None:
    """Masks opened to be corrected are autosaved from their first edit on
    (``_autosave._opened_masks``): the viewer must watch its new layers."""
    from napari import current_viewer

    from ._autosave import watch_new_layers

    viewer = current_viewer()
    if viewer is not None:
        watch_new_layers(viewer)


def _read_masks_folder(path: PathOrPaths) -> list:
    from surgseg_core.io.export import read_png_masks
    from surgseg_core.io.label_stack import DEFAULT_MAX_RAM_MB

    p = Path(_single(path))
    data = read_png_masks(p, max_ram_mb=DEFAULT_MAX_RAM_MB)  # memory-mapped when long, as label TIFFs
    _autosave_corrections()
    return [_placed(labels_layer_data(data, p.name, _saved_metadata(p)))]


def _read_points_csv(path: PathOrPaths) -> list:
    from surgseg_core.io.export import read_points_csv

    p = Path(_single(path))
    table = read_points_csv(p)
    return [_placed(points_layer_data(table.data, p.stem, table.features, metadata=_saved_metadata(p)))]


def _placed(layer_data: tuple) -> tuple:
    """Put a saved layer back where it lay on its video (the ``placement``
    its provenance recorded: a result of a ranged, strided or downscaled
    opening lines up with the whole video again)."""
    data, kwargs, kind = layer_data
    place = ((kwargs.get("metadata") or {}).get("provenance") or {}).get("placement") or {}
    ndim = np.ndim(data) if kind == "labels" else (np.shape(data)[1] if np.ndim(data) == 2 else 0)
    scale, translate = place.get("scale"), place.get("translate")
    if ndim and isinstance(scale, list) and isinstance(translate, list) and len(scale) == len(translate) == ndim:
        kwargs = {**kwargs, "scale": tuple(float(v) for v in scale), "translate": tuple(float(v) for v in translate)}
    return data, kwargs, kind


def _saved_metadata(p: Path) -> dict:
    """A saved result's layer metadata: its file, and the provenance saved
    with it (so saving it again keeps its video, frames and model)."""
    from surgseg_core.provenance import read_provenance

    meta: dict = {"source_path": str(p)}
    try:
        prov = read_provenance(p)
    except (OSError, ValueError) as exc:
        prov = {}
        import logging

        logging.getLogger(__name__).warning("%s: provenance not readable (%s)", p, exc)
    if prov:
        meta["provenance"] = prov
        if prov.get("source_video"):
            meta["source_video"] = prov["source_video"]
    return meta
