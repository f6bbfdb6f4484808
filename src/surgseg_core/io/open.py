"""``open_video``: one entry point for videos, TIFF stacks and frame folders."""
from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import VideoError
from .metadata import VideoMetadata, format_time
from .pixels import output_size
from .source import FrameSource, PendingMetadata

log = logging.getLogger(__name__)

#: Video files everything opens (the napari reader, file dialogs, dataset folders read this list;
#: the plugin manifest's filename patterns are checked against it by a test). MPEG-TS / -PS:
#: what many surgical recorders write (.ts, .m2ts, .mts, .mpg).
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".wmv",
                  ".flv"}
TIFF_SUFFIXES = {".tif", ".tiff"}
#: Build a video's frame index on a background thread right after its first
#: frame is decoded (False: when first needed: len(), metadata, another frame).
INDEX_IN_BACKGROUND = False


def _check_int(path, name, value, minimum, allow_none=False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise VideoError(f"{path}: {name} must be a whole number, got {value!r}")
    if value < minimum:
        raise VideoError(f"{path}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_seconds(path, name, value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise VideoError(f"{path}: {name} must be a time in seconds >= 0, got {value!r}")
    return float(value)


def select_frames(path, n: int, timestamps: Optional[np.ndarray], start, stop, step, start_time, end_time,
                  damage: Optional[str] = None) -> Tuple[int, int, int]:
    """Validate the frame-range options; returns (start, stop, step) in source frames.

    ``damage``: why a truncated file has only ``n`` readable frames; a range
    reaching past them names it."""
    step = _check_int(path, "step", step, 1)
    start = _check_int(path, "start", start, 0)
    stop = _check_int(path, "stop", stop, 0, allow_none=True)
    start_time = _check_seconds(path, "start_time", start_time)
    end_time = _check_seconds(path, "end_time", end_time)
    if start_time is not None or end_time is not None:
        if start != 0 or stop is not None:
            raise VideoError(f"{path}: give the range either in frames (start/stop) or in seconds "
                             "(start_time/end_time), not both")
        if timestamps is None or not np.all(np.isfinite(timestamps)):
            raise VideoError(f"{path}: start_time/end_time need a frame rate; this source has none "
                             "(pass fps=... or use start/stop frame numbers)")
        if end_time is not None and start_time is not None and end_time <= start_time:
            raise VideoError(f"{path}: end_time ({end_time} s) must be after start_time ({start_time} s)")
        eps = 1e-6
        start = int(np.searchsorted(timestamps, (start_time or 0.0) - eps, side="left"))
        stop = None if end_time is None else int(np.searchsorted(timestamps, end_time - eps, side="left"))
        if start >= n:
            raise VideoError(f"{path}: start_time {start_time} s is past the end of the "
                             f"{'readable part' if damage else 'video'} (last frame at {timestamps[-1]:.3f} s)"
                             + (f"; {damage}" if damage else ""))
        if damage and end_time is not None and stop > n - 1 and end_time > timestamps[-1] + 1e-6:
            stop = n + 1  # reaches into the damage: say so below
    if start >= n:
        if damage:
            raise VideoError(f"{path}: start={start} is past the last readable frame; {damage}")
        raise VideoError(f"{path}: start={start} is past the last frame (the source has {n} frames)")
    if stop is None:
        stop = n
    elif stop > n:
        if damage:
            raise VideoError(f"{path}: the range reaches past the last readable frame ({n - 1}); {damage}")
        raise VideoError(f"{path}: stop={stop} is past the end (the source has {n} frames)")
    if stop <= start:
        raise VideoError(f"{path}: the range start={start}, stop={stop} selects no frames")
    return start, stop, step


def _check_downscale(path, downscale) -> float:
    if isinstance(downscale, bool) or not isinstance(downscale, numbers.Real) or not math.isfinite(downscale) \
            or downscale < 1:
        raise VideoError(f"{path}: downscale must be a number >= 1 (2 = half size), got {downscale!r}")
    return float(downscale)


def open_video(
    path: Union[str, os.PathLike],
    *,
    start: int = 0,
    stop: Optional[int] = None,
    step: int = 1,
    downscale: float = 1,
    start_time: Optional[float] = None,
    end_time: Optional[float] = None,
    cache_mb: float = 256,
    prefetch: int = 0,
    fps: Optional[float] = None,
    pattern: Optional[str] = None,
) -> FrameSource:
    """Open a video file, multi-page TIFF or folder of numbered frames lazily.

    Parameters
    ----------
    path : video file (mp4, avi, mov, mkv, m4v, webm...), ``.tif``/``.tiff``
        stack, or folder of numbered PNG/JPEG frames. A glob such as
        ``"seq/*_endo.png"`` selects frames inside a folder.
    start, stop, step : frame range in *source* frame indices (stop exclusive).
    start_time, end_time : the same range in seconds from the first frame
        (instead of start/stop).
    downscale : shrink factor (2 = half width and height), area-filtered.
    cache_mb : memory cap of the decoded-frame LRU cache.
    prefetch : decode this many frames ahead in a background thread.
    fps : frame rate for TIFF stacks and frame folders (videos know theirs).
    pattern : glob selecting the frames inside a folder.

    Example: every 5th frame of minutes 3-8 at half size::

        src = open_video("case01.mp4", start_time=180, end_time=480, step=5, downscale=2)

    Raises :class:`~surgseg_core.errors.VideoError` naming the file and the
    problem for anything that cannot be read.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.exists() and pattern is None and any(ch in path.name for ch in "*?["):
        path, pattern = path.parent, path.name
    if not path.exists():
        if path.is_symlink():  # exists() follows links: a loop or a dangling link is not "not found"
            try:
                target = path.resolve(strict=True)
            except RuntimeError:
                raise VideoError(f"{path}: the symbolic link loops (it leads back to itself)") from None
            except OSError:
                target = Path(os.readlink(path))
            raise VideoError(f"{path}: the symbolic link points to {target}, which does not exist")
        raise VideoError(f"{path}: file or folder not found")
    downscale = _check_downscale(path, downscale)
    if isinstance(cache_mb, bool) or not isinstance(cache_mb, numbers.Real) or not cache_mb >= 0:
        raise VideoError(f"{path}: cache_mb must be a number >= 0, got {cache_mb!r}")
    prefetch = _check_int(path, "prefetch", prefetch, 0)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0):
        raise VideoError(f"{path}: fps must be a number > 0, got {fps!r}")

    if path.is_dir():
        opener = _open_folder
    elif path.suffix.lower() in TIFF_SUFFIXES:
        opener = _open_tiff
    else:
        if path.stat().st_size == 0:
            raise VideoError(f"{path}: the file is empty")
        opener = _open_av
    opts = dict(start=start, stop=stop, step=step, start_time=start_time, end_time=end_time)
    meta, make_reader = opener(path, downscale, opts, fps=fps, pattern=pattern)
    src = FrameSource(meta, make_reader, cache_mb=cache_mb, prefetch=prefetch)
    try:
        src._read_first()  # fail now, with a clear message, rather than in the viewer later
    except BaseException:
        src.close()
        raise
    if isinstance(meta, PendingMetadata) and INDEX_IN_BACKGROUND:
        meta.start()  # the frame index, after the first frame (the time to first frame)
    return src


def _metadata(path, fmt, codec, size, src_size, fps, duration, n_src, sel, downscale, src_times,
              vfr=False, time_offset=0.0, damaged_from=None, damage=None) -> VideoMetadata:
    start, stop, step = sel
    indices = np.arange(start, stop, step, dtype=np.int64)
    return VideoMetadata(
        path=str(path), format=fmt, codec=codec, width=size[0], height=size[1],
        source_width=src_size[0], source_height=src_size[1], fps=fps, duration=duration,
        n_frames=len(indices), source_n_frames=n_src, start=start, stop=stop, step=step,
        downscale=downscale, timestamps=src_times[indices], source_indices=indices,
        variable_frame_rate=vfr, time_offset=time_offset, damaged_from=damaged_from, damage=damage,
    )


def _uniform_times(n: int, fps: Optional[float]) -> np.ndarray:
    return np.arange(n) / fps if fps else np.full(n, np.nan)


def _from_frame_zero(path, opts) -> bool:
    """The range starts at source frame 0 and needs no frame count to check:
    the first frame can be read before the index exists (see _open_av_lazy)."""
    start = opts["start"]
    return (isinstance(start, numbers.Integral) and not isinstance(start, (bool, np.bool_)) and start == 0
            and opts["stop"] is None and opts["start_time"] is None and opts["end_time"] is None
            and _check_int(path, "step", opts["step"], 1) is not None)


def _open_av(path: Path, downscale: float, opts, fps=None, pattern=None):
    from .video_pyav import PyAVReaderPool, open_indexed

    if pattern is not None:
        raise VideoError(f"{path}: pattern= only applies to folders of frames")
    if fps is not None:
        log.info("%s: fps=%s ignored; videos use their own timestamps", path, fps)
    if _from_frame_zero(path, opts):
        lazy = _open_av_lazy(path, downscale, opts)
        if lazy is not None:
            return lazy
    index, opened = open_indexed(path)
    try:
        times = index.timestamps()
        damage = _damage_message(index, times)
        sel = select_frames(path, index.n_frames, times, **opts, damage=damage)
    except BaseException:
        if opened is not None:
            opened[0].close()
        raise
    src_size = (index.width, index.height)
    size = output_size(*src_size, downscale)
    meta = _video_metadata(path, index, size, sel, downscale, times, damage)
    out = size if size != src_size else None
    spare = [opened] if opened is not None else []  # open_video's first read takes it

    def make_reader():
        return PyAVReaderPool(path, index, out, opened=spare.pop() if spare else None)

    return meta, make_reader


def _video_metadata(path, index, size, sel, downscale, times, damage) -> VideoMetadata:
    return _metadata(path, "video", index.codec, size, (index.width, index.height), index.fps, index.duration,
                     index.n_frames, sel, downscale, times, vfr=index.variable_frame_rate,
                     time_offset=index.time_offset, damaged_from=index.damaged_from, damage=damage)


def _open_av_lazy(path: Path, downscale: float, opts):
    """Frame 0 first, the frame index after it.

    Building the index (demuxing the file, or reading and checking MP4 sample
    tables) before the first frame made our time to first frame 1.5-2.6x that
    of a reader that just decodes it (BENCHMARKS.md). Here the file is opened
    once for the first frame; the index is built by a background thread started
    after it (``INDEX_IN_BACKGROUND``), or by the first thread that needs it:
    ``len()``, ``metadata``, any other frame wait for it (and raise what it
    found). Returns None where the frame size is not known before decoding
    (the indexed open then finds it)."""
    from .video_pyav import IndexBuilder, PyAVReaderPool, open_first

    container, stream = open_first(path)
    ctx = stream.codec_context
    src_size = (int(ctx.width or stream.width or 0), int(ctx.height or stream.height or 0))
    if not all(src_size):
        container.close()
        return None
    size = output_size(*src_size, downscale)
    out = size if size != src_size else None
    builder = IndexBuilder(path)

    def resolve() -> VideoMetadata:
        index = builder.result()
        times = index.timestamps()
        damage = _damage_message(index, times)
        sel = select_frames(path, index.n_frames, times, **opts, damage=damage)
        return _video_metadata(path, index, output_size(index.width, index.height, downscale), sel, downscale,
                               times, damage)

    spare = [(container, stream)]  # open_video's first read takes it

    def make_reader():
        if spare:
            return PyAVReaderPool(path, builder, out, opened=spare.pop(), first=True)
        return PyAVReaderPool(path, builder, out)

    return PendingMetadata(str(path), size[0], size[1], resolve, builder.start, builder.cancel), make_reader


def _damage_message(index, times: np.ndarray) -> Optional[str]:
    """What a user needs to know about a truncated file: where the readable part ends."""
    if index.damaged_from is None:
        return None
    last = index.damaged_from - 1
    return (f"the file is truncated or damaged ({index.damage}): frames 0-{last} are readable, the damage "
            f"starts after frame {last} ({format_time(times[last])}, the last good frame)")


def _open_tiff(path: Path, downscale: float, opts, fps=None, pattern=None):
    from .tiff import TiffReader, TiffStack, open_tiff

    if pattern is not None:
        raise VideoError(f"{path}: pattern= only applies to folders of frames")
    stack, scale = open_tiff(path)
    fps = fps or stack.fps
    times = _uniform_times(stack.n_frames, fps)
    try:
        sel = select_frames(path, stack.n_frames, times if fps else None, **opts)
    except BaseException:
        stack.close()
        raise
    src_size = (stack.width, stack.height)
    size = output_size(*src_size, downscale)
    duration = stack.n_frames / fps if fps else None
    meta = _metadata(path, "tiff", stack.compression or "tiff", size, src_size, fps, duration,
                     stack.n_frames, sel, downscale, times)
    out = size if size != src_size else None
    first = [stack]  # the probe stack serves the first reader; later readers open their own

    def make_reader():
        return TiffReader(first.pop() if first else TiffStack(path), scale, out)

    return meta, make_reader


def _open_folder(path: Path, downscale: float, opts, fps=None, pattern=None):
    from .frame_folder import FrameFolderReader, open_frame_folder

    files, src_size, scale, codec = open_frame_folder(path, pattern)
    times = _uniform_times(len(files), fps)
    sel = select_frames(path, len(files), times if fps else None, **opts)
    size = output_size(*src_size, downscale)
    duration = len(files) / fps if fps else None
    meta = _metadata(path, "frames", codec, size, src_size, fps, duration, len(files), sel, downscale, times)
    out = size if size != src_size else None
    return meta, lambda: FrameFolderReader(files, scale, out)
