"""Overlay videos: label colours blended in and points drawn on every frame,
streamed one frame at a time to an H.264 MP4 through imageio-ffmpeg."""
from __future__ import annotations

import colorsys
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..errors import DatasetError, VideoError, WriteError
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from .labels_io import open_labels
from .points_csv import PointsTable, read_points_csv

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


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
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise DatasetError(f"labels hold negative values (down to {int(labels.min())}): label ids are 0 "
                               "(background) or positive")
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


def paint_frame(frame: np.ndarray, labels: Optional[np.ndarray] = None, *, colors: Any = None, alpha: float = 0.5,
                points_yx: Optional[np.ndarray] = None, point_color: Any = (255, 255, 0),
                point_radius: float = 4.0) -> np.ndarray:
    """One frame as the overlay video draws it (label colours blended in,
    points with a dark rim): for pictures made of several results."""
    out = _frame_rgb(frame)
    if labels is not None:
        out = _LabelPainter(colors, alpha).paint(out, np.asarray(labels))
    else:
        out = out.copy()
    if points_yx is not None and len(points_yx):
        yx = np.asarray(points_yx, float).reshape(-1, 2)
        _draw_points(out, yx, point_radius, _point_colors(point_color, len(yx)))
    return out


def _verify_mp4(path: Path, frames: int) -> None:
    """The encoder's output is a readable MP4 with every frame sent (imageio's
    writer does not check ffmpeg's exit status: a full disk or a killed
    encoder leaves a short or unreadable file that must not replace a good one)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            got = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise WriteError(f"the overlay video was not written completely ({exc})") from exc
    if got != frames:
        raise WriteError(f"the overlay video was not written completely: {got} of {frames} frames")


def _variable_frame_times(meta: Any, n: int) -> Optional[np.ndarray]:
    """Seconds of each selected frame from the first, for a source with a
    variable frame rate whose times are known and increasing; else None."""
    if meta is None or not getattr(meta, "variable_frame_rate", False):
        return None
    times = np.asarray(getattr(meta, "timestamps", ()), dtype=float)
    if len(times) != n or n < 2 or not np.all(np.isfinite(times)) or not np.all(np.diff(times) > 0):
        return None
    return times - times[0]


class _TimedWriter:
    """H.264 MP4 through PyAV with each frame's presentation time set from
    ``times`` (seconds): a variable-frame-rate source keeps its timing, which
    imageio-ffmpeg's raw pipe (one constant rate) cannot. Same protocol as
    imageio's writer: ``send(None)`` to start, ``send(rgb)``, ``close()``."""

    TIME_BASE = 90000  # ticks per second (MPEG's clock): sub-millisecond times

    def __init__(self, path: Path, size: Tuple[int, int], times: np.ndarray, crf: int, preset: str) -> None:
        import av
        from fractions import Fraction

        self._av = av
        self.times = times
        self.tb = Fraction(1, self.TIME_BASE)
        self.container = av.open(str(path), "w", format="mp4")
        fps = (len(times) - 1) / float(times[-1])  # the average rate, a hint for the encoder's rate control
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = int(size[0]), int(size[1])
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = self.tb
        self.stream.codec_context.time_base = self.tb
        self.stream.options = {"crf": str(int(crf)), "preset": str(preset)}
        self.sent = 0

    def send(self, rgb: Optional[np.ndarray]) -> None:
        if rgb is None:
            return
        if self.sent >= len(self.times):
            raise RuntimeError("more frames than frame times")
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = int(round(float(self.times[self.sent]) * self.TIME_BASE))
        frame.time_base = self.tb
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except self._av.FFmpegError as exc:
            if isinstance(exc, OSError):  # a full disk keeps its errno
                raise
            raise RuntimeError(str(exc)) from exc
        self.sent += 1

    def close(self) -> None:
        try:
            try:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
            finally:
                self.container.close()
        except self._av.FFmpegError as exc:
            if isinstance(exc, OSError):
                raise
            raise WriteError(f"the overlay video was not written completely ({exc})") from exc


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
    crf: int = 20,
    preset: str = "veryfast",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    provenance: Optional[Mapping[str, Any]] = None,
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
    crf, preset: x264 quality (lower crf = better, bigger) and speed; the
        defaults favour a quick export that still looks clean for review.
    fps: output frame rate; default keeps real time: the video's own rate
        divided by the stride it was opened with (``metadata.fps / step``),
        or 25 when the source has no timing. A variable-frame-rate source
        (``metadata.variable_frame_rate``) keeps each frame's own time
        instead; an explicit ``fps`` then spaces its frames evenly, with a
        warning saying how far their times move.

    yuv420p needs even width and height: odd sizes are padded by one row/column
    (edge pixels repeated) instead of resizing, so drawn pixels stay in place.
    The file is written to a temporary name and renamed at the end; on error
    or cancel nothing is left at ``out_path``.

    ``<out>.mp4.provenance.json`` records the source video (path, hash,
    frames), the labels and points files drawn (path, hash) and
    ``provenance`` (the labels' model, prompts, ... when known).
    """
    import imageio_ffmpeg

    drawn = {"labels": labels, "points": points}

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
        source = getattr(getattr(video, "metadata", None), "path", None)
        if source is not None and Path(source).resolve() == out_path.resolve():
            raise VideoError(f"{out_path}: the overlay would overwrite its own source video; choose another name")
        meta = getattr(video, "metadata", None)
        times = _variable_frame_times(meta, n) if not single else None
        if fps is None:
            src_fps = getattr(meta, "fps", None) if meta is not None else None
            step = max(1, int(getattr(meta, "step", 1) or 1))
            fps = float(src_fps) / step if src_fps else 25.0
        elif times is not None:  # the user asked for a constant rate: say what that does to the timing
            import warnings

            drift = float(np.max(np.abs(times - np.arange(n) / float(fps)))) if fps > 0 else 0.0
            warnings.warn(f"{getattr(meta, 'path', 'the video')} has a variable frame rate; with fps={fps:g} the "
                          f"overlay's frames are evenly spaced and their times differ from the source's by up to "
                          f"{drift:.3g} s (leave fps unset to keep the source's frame times)", UserWarning,
                          stacklevel=2)
            times = None
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
            kind = np.dtype(getattr(labels, "dtype", np.uint8)).kind
            if kind not in "iub":  # a float map (probabilities, NaN) would paint nothing or the wrong ids
                raise DatasetError(f"labels must be integer ids (0 = background), got {np.dtype(labels.dtype)}; "
                                   "threshold or round a probability map into a label image first")
        static_labels = np.asarray(labels) if labels is not None and len(labels.shape) == 2 else None
        pdata = _load_points(points)
        by_frame = _points_by_frame(pdata, n)
        every_frame = by_frame.pop(-1, None)
        pcolors = _point_colors(point_color, 0 if pdata is None else len(pdata))
        painter = _LabelPainter(colors, alpha)

        pad_h, pad_w = h % 2, w % 2
        if pad_h or pad_w:
            log.info("padding %dx%d frames to %dx%d for yuv420p", w, h, w + pad_w, h + pad_h)
        with atomic_path(out_path) as tmp:
            if times is not None:  # variable frame rate: every frame keeps its source time
                writer = _TimedWriter(tmp, (w + pad_w, h + pad_h), times, crf, preset)
            else:
                writer = imageio_ffmpeg.write_frames(
                    str(tmp),
                    (w + pad_w, h + pad_h),
                    fps=fps,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    quality=None,  # set through -crf below (imageio's quality maps to a very low crf)
                    output_params=["-crf", str(int(crf)), "-preset", str(preset)],
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
                        lab = static_labels if static_labels is not None else np.asarray(labels[t])
                        rgb = painter.paint(rgb, lab)
                    pts = by_frame.get(t)
                    if pts is not None or every_frame is not None:
                        rgb = rgb.copy() if not rgb.flags.writeable else rgb
                        for rows in (every_frame, pts):
                            if rows is not None:
                                _draw_points(rgb, pdata[rows, -2:], point_radius, pcolors[rows])
                    if pad_h or pad_w:
                        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                    try:
                        writer.send(np.ascontiguousarray(rgb))
                    except (OSError, RuntimeError, StopIteration) as exc:  # ffmpeg died (disk full, ...)
                        raise VideoError(f"{out_path}: the H.264 encoder stopped at frame {t} ({exc})") from exc
                    done = t + 1
                    report(progress, done, n, "writing overlay video")
                    if done >= n:
                        break
            finally:
                writer.close()
            if done == 0:
                raise VideoError("the video has no frames to export")
            _verify_mp4(tmp, done)  # inside the block: a short file is removed and never replaces the old one
    finally:
        if opened is not None:
            opened.close()
        if labels_opened is not None and hasattr(labels_opened, "close"):
            labels_opened.close()
    _write_overlay_provenance(out_path, video, done, drawn, provenance, alpha=float(alpha), fps=float(fps))
    log.info("wrote overlay video %s (%d frames, %.3g fps)", out_path, done, fps)
    return out_path


def _write_overlay_provenance(out_path: Path, video: Any, n: int, drawn: Mapping[str, Any],
                              base: Optional[Mapping[str, Any]], **options: Any) -> None:
    from ..provenance import build_provenance, read_provenance, source_fields, video_identity, write_sidecar

    if base is None and isinstance(drawn.get("labels"), (str, os.PathLike)):
        try:  # a labels file's own record names the model that made it
            base = read_provenance(drawn["labels"])
        except (OSError, ValueError) as exc:
            log.warning("%s: provenance not readable (%s)", drawn["labels"], exc)
    inputs = {}
    for what, value in drawn.items():
        if isinstance(value, (str, os.PathLike)):
            ident = video_identity(value)
            inputs[what] = {"path": ident["source_video"], "sha256": ident["source_video_sha256"]}
        else:
            inputs[what] = None if value is None else "array"
    fields = source_fields(video, range(n))
    if fields["source"] is None and base:
        fields.pop("source")  # an array: the layers' own record names the video
    write_sidecar(out_path, build_provenance(base=base, result="overlay", options=options, drawn=inputs, **fields))
