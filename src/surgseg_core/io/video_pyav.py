"""Video files (mp4, avi, mov, mkv, m4v, webm, MPEG-TS .ts/.m2ts, MPEG-PS .mpg) through PyAV.

Frame-accurate random access needs to know where every frame is. We build
an index by *demuxing* the stream once (reads packets, decodes nothing; a
10-minute 1080p file takes a fraction of a second) and trust it over the
header's frame count, which is wrong for some files. Frames are numbered in
presentation order (sorted PTS), so B-frames, non-zero start times and
variable frame rates all index correctly. Reading frame ``t`` seeks to the
last keyframe at or before ``t`` and decodes forward; reading ``t+1`` after
``t`` just keeps decoding (no re-seek). Containers without a seek index
(MPEG-TS/PS) are seeked by the keyframes' byte offsets (:func:`_seeks_by_byte`).

The index is built after the first frame (:class:`IndexBuilder`): frame 0 is
the first frame the decoder outputs, so ``open_video`` shows it as soon as a
naive reader would; whatever needs the index (frame count, timestamps, any
other frame) waits for it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from functools import cached_property
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import VideoError

log = logging.getLogger(__name__)

#: Frame + slice threading: faster sequential decode and faster decode-forward
#: after a seek (the GOP run dominates random access on long-GOP files).
THREAD_TYPE = "AUTO"
#: Files at least this big are indexed from MP4 sample tables when possible.
SAMPLE_TABLE_MIN_BYTES = 64 * 2**20


def _av():
    import av  # local import: keeps `import surgseg_core.io` cheap

    return av


@dataclass
class VideoIndex:
    """Presentation-ordered frame timestamps and seekable keyframes of one stream."""

    pts: np.ndarray  # int64, sorted: pts[i] is frame i's presentation timestamp (stream time base)
    key_pts: np.ndarray  # int64, sorted PTS of keyframe packets (seek targets)
    time_base: Fraction
    codec: str
    width: int
    height: int
    header_frames: int
    average_rate: Optional[Fraction]
    #: Truncated/damaged files: the first frame that is missing (= the number
    #: of readable frames, all indexed) and why; None for intact files.
    damaged_from: Optional[int] = None
    damage: Optional[str] = None
    #: Byte offset in the file of each keyframe packet (aligned with ``key_pts``) for containers whose
    #: timestamp seek is not keyframe-exact (MPEG-TS/PS: see :func:`_seeks_by_byte`); None: seek by timestamp.
    key_bytes: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        #: keyframe positions whose group of pictures decoded with errors (damaged bytes inside the file:
        #: the decoder conceals them and later frames of the group reference the damage), found while reading
        self.corrupt_gops: set = set()
        self._warned_gops: set = set()
        self._lookup: Dict[int, int] = {int(p): i for i, p in enumerate(self.pts.tolist())}
        # First presented frame that each keyframe makes decodable.
        self.key_first = np.searchsorted(self.pts, self.key_pts, side="left")

    @property
    def n_frames(self) -> int:
        return len(self.pts)

    def index_of(self, ts: Optional[int]) -> Optional[int]:
        """Presentation index of a decoded frame's timestamp (None if unknown)."""
        if ts is None:
            return None
        i = self._lookup.get(int(ts))
        if i is not None:
            return i
        # Some decoders round timestamps; accept the nearest within half a frame.
        j = int(np.searchsorted(self.pts, ts))
        best = None
        for k in (j - 1, j):
            if 0 <= k < len(self.pts) and (best is None or abs(self.pts[k] - ts) < abs(self.pts[best] - ts)):
                best = k
        if best is not None and abs(int(self.pts[best]) - int(ts)) * 2 <= self.frame_ticks:
            return best
        return None

    @cached_property  # pts never change after indexing; a median over a long video costs ms
    def frame_ticks(self) -> int:
        if len(self.pts) > 1:
            return max(1, int(np.median(np.diff(self.pts))))
        if self.average_rate and self.time_base:  # one frame: it lasts one frame period, not one tick
            return max(1, int(round(1 / (float(self.average_rate) * float(self.time_base)))))
        return 1

    def gop_frames(self, key_pos: int) -> tuple:
        """(first, last) presentation index decoded from keyframe ``key_pos``."""
        last = int(self.key_first[key_pos + 1]) - 1 if key_pos + 1 < len(self.key_first) else self.n_frames - 1
        return int(self.key_first[key_pos]), last

    def damaged_frames(self) -> List[int]:
        """Frames known so far (from what was decoded) to come from a group
        of pictures that decoded with errors."""
        out: List[int] = []
        for k in sorted(self.corrupt_gops):
            first, last = self.gop_frames(k)
            out += range(first, last + 1)
        return out

    def keyframe_for(self, i: int) -> int:
        """Position in ``key_pts`` of the last keyframe that lets us decode frame i."""
        k = int(np.searchsorted(self.key_pts, self.pts[i], side="right")) - 1
        return max(k, 0)

    def timestamps(self) -> np.ndarray:
        """Seconds from the first frame, per frame."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    @property
    def time_offset(self) -> float:
        return float(self.pts[0] * self.time_base)

    @cached_property
    def variable_frame_rate(self) -> bool:
        if len(self.pts) < 3:
            return False
        d = np.diff(self.pts)
        # Constant-rate streams may jitter by one tick from rounding.
        return bool(d.max() - d.min() > max(1, 0.01 * np.median(d)))

    @property
    def fps(self) -> Optional[float]:
        n = len(self.pts)
        if self.variable_frame_rate and n > 1:
            return float((n - 1) / ((self.pts[-1] - self.pts[0]) * self.time_base))
        if self.average_rate:
            return float(self.average_rate)
        if n > 1:
            return float(1 / (self.frame_ticks * self.time_base))
        return None

    @property
    def duration(self) -> Optional[float]:
        if not len(self.pts):
            return 0.0
        last = (self.pts[-1] - self.pts[0] + self.frame_ticks) * self.time_base
        return float(last)


def _open_container(path: Path):
    av = _av()
    try:
        container = av.open(str(path), mode="r")
    except av.error.EOFError as exc:
        raise VideoError(f"{path}: the file holds no video frames (it ends before any video data: "
                         "empty or truncated)") from exc
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        from .mp4_index import lacks_moov

        if lacks_moov(path):
            raise VideoError(f"{path}: the file is truncated: its frame index (the MP4 'moov' box, which "
                             "recorders write when they stop) is missing, so no frame can be located; a repair "
                             "tool such as untrunc can rebuild it using an intact file from the same "
                             "recorder") from exc
        raise VideoError(f"{path}: not a readable video file ({exc.__class__.__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream (or its video track is empty)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or getattr(ctx, "name", None) in (None, "", "none"):
        container.close()
        raise VideoError(f"{path}: unsupported video codec (no decoder available in this PyAV build)")
    return container, stream


def build_index(path: Path) -> VideoIndex:
    """Index the first video stream: MP4/MOV sample tables when usable, else demux every
    packet (no decoding)."""
    index, opened = open_indexed(path)
    if opened is not None:
        opened[0].close()
    return index


def open_indexed(path: Path, cancel: Optional[threading.Event] = None) -> Tuple[VideoIndex, Optional[tuple]]:
    """:func:`build_index`, and the container it opened as ``(container, stream)``
    for the first reader when the file indexed cleanly (else None, closed).
    Handing it over saves opening the file twice: ~15 ms of the time to first
    frame (FFmpeg probes the streams on every open). ``cancel``: set it to
    stop demuxing early (raises :class:`IndexCancelled`)."""
    av = _av()
    container, stream = _open_container(path)
    handed_over = False
    try:
        _discard_others(container, stream)
        fast = _index_from_sample_tables(path, container, stream)
        if fast is not None:
            pts, keys = fast
            index = _make_index(path, stream, pts, keys)
            handed_over = True
            return index, (container, stream)
        pts, keys, last_dts = [], [], None
        key_bytes: Dict[int, int] = {}  # keyframe pts -> byte offset to seek to (see _seeks_by_byte)
        exact = "mpegts" in (container.format.name or "")
        prev_pos = 0  # byte offset of the last packet (file order) before this one
        n_packets, corrupt_tail = 0, 0  # corrupt_tail: trailing packets (decode order) with damaged data
        untimed = 0  # packets without any timestamp (see _UNTIMED_MAX)
        problem: Optional[str] = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # end-of-stream flush packet
                    continue
                n_packets += 1
                if cancel is not None and not n_packets % 256 and cancel.is_set():
                    raise IndexCancelled(str(path))
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    # Nowhere to place it in presentation order. A stream-copied cut that starts mid-GOP
                    # (`ffmpeg -ss T -i in.mp4 -c copy out.mkv`) keeps the open-GOP leading pictures of its
                    # first keyframe without timestamps; the decoder drops them (they reference frames
                    # before the cut), so they are not frames. A raw stream has none at all: refused below.
                    untimed += 1
                    if untimed > _UNTIMED_MAX or packet.is_keyframe:
                        raise VideoError(_untimed_message(path, container))
                    continue
                # damage in the middle stays indexed (reading that frame names it); a damaged end is cut below
                corrupt_tail = corrupt_tail + 1 if packet.is_corrupt else 0
                pos = packet.pos if packet.pos is not None and packet.pos >= 0 else None
                if packet.is_keyframe:
                    keys.append(ts)
                    key_bytes.setdefault(ts, pos if exact and pos is not None else prev_pos)
                if pos is not None:
                    prev_pos = pos
                if packet.dts is not None and not packet.is_corrupt:
                    last_dts = packet.dts if last_dts is None else max(last_dts, packet.dts)
                if packet.is_discard:  # decoded for reference only (edit lists), never shown
                    corrupt_tail = 0
                    continue
                pts.append(ts)
        except av.error.FFmpegError as exc:
            problem = f"reading stopped after {n_packets} packets ({exc.__class__.__name__}: {exc})"
        if corrupt_tail:  # e.g. the last packet of a cut-off file: its data is incomplete
            dropped = set(pts[-corrupt_tail:])
            pts, keys = pts[:-corrupt_tail], [k for k in keys if k not in dropped]
            problem = problem or ("its last frame is incomplete" if corrupt_tail == 1
                                  else f"its last {corrupt_tail} frames are incomplete")
        if problem is None:
            problem = _incomplete(container, stream, n_packets, pts) or _matroska_cut(path, container)
        if untimed and not pts:
            raise VideoError(_untimed_message(path, container))
        if untimed:
            log.info("%s: %d video packets without timestamps skipped (leading pictures of a file cut mid-GOP; "
                     "the decoder does not show them)", path, untimed)
        if problem is not None and (not pts or not keys):
            raise VideoError(f"{path}: the file is truncated or corrupt ({problem}): not one complete "
                             "frame could be read")
        index = _make_index(path, stream, pts, keys, key_bytes if _seeks_by_byte(container) else None)
        if problem is not None:  # a damaged file: the readers start from a fresh open
            return _readable_part(path, index, problem, last_dts), None
        handed_over = True
        return index, (container, stream)
    finally:
        if not handed_over:
            container.close()


def _discard_others(container, stream) -> None:
    """Let the demuxer drop every stream but ``stream`` (audio, data)."""
    av = _av()
    for other in container.streams:
        if other is not stream:
            other.discard = av.stream.Discard.all if hasattr(av.stream, "Discard") else "all"


def open_first(path: Path) -> tuple:
    """``(container, stream)`` for the first frame, before any index exists:
    the same checks (and errors) as every open, the other streams discarded,
    the decoder left at FFmpeg's default (slice) threading, which gives the
    first frame sooner than frame threading (frame threads decode the
    following frames at the same time; on 2 cores: 6 vs 14 ms for a 1080p
    MPEG-4 frame)."""
    container, stream = _open_container(path)
    _discard_others(container, stream)
    return container, stream


class IndexCancelled(Exception):
    """Indexing stopped because nobody needs the index any more (source closed)."""


class IndexBuilder:
    """Builds a file's :class:`VideoIndex` once, after the first frame: in the
    first thread that needs it (:meth:`result`), or on a background thread
    (:meth:`start`) that :meth:`result` then waits for.

    Errors found while indexing (damaged files) are kept and raised by every
    :meth:`result` call, in the thread that needs the index (never lost in a
    background thread); warnings are logged as they are found. The build takes
    no reader's or source's lock, so threads holding those can wait for it
    without deadlock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._build_lock = threading.Lock()  # held while building: result() in other threads waits on it
        self._lock = threading.Lock()  # guards _opened
        self._cancel = threading.Event()
        self._done = False
        self._index: Optional[VideoIndex] = None
        self._opened: Optional[tuple] = None
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Build on a background thread (once)."""
        if self._thread is None and not self._done:
            self._thread = threading.Thread(target=self._build, name=f"surgseg-index-{Path(self.path).name}",
                                            daemon=True)
            self._thread.start()

    def _build(self) -> None:
        with self._build_lock:
            if self._done:
                return
            try:
                index, opened = open_indexed(self.path, self._cancel)
            except IndexCancelled:
                return  # not done: a later result() builds it again
            except Exception as exc:  # kept for result(): raised where the index is needed
                self._error, self._done = exc, True
                return
            with self._lock:
                if opened is not None:
                    if self._cancel.is_set():
                        opened[0].close()
                    else:
                        self._opened = opened
            self._index, self._done = index, True

    def result(self) -> VideoIndex:
        """The index: built here, or waited for where a build runs. Raises what the build raised."""
        while not self._done:  # (a build cancelled by close() leaves it undone)
            self._cancel.clear()  # needed after all (e.g. metadata after close)
            self._build()
        if self._error is not None:
            raise self._error
        return self._index

    def take_opened(self) -> Optional[tuple]:
        """The container the build opened, positioned anywhere (once; None when taken or not kept)."""
        with self._lock:
            opened, self._opened = self._opened, None
        return opened

    def cancel(self) -> None:
        """Nobody needs the index now: stop a running build soon, close what it opened."""
        with self._lock:
            self._cancel.set()
            opened, self._opened = self._opened, None
        if opened is not None:
            opened[0].close()


def _index_from_sample_tables(path: Path, container, stream):
    """MP4/MOV fast path: (pts, keyframe pts) read from the moov box, or None."""
    from .mp4_index import matches_packets, sample_table_index

    if "mov" not in (container.format.name or "") or stream.time_base is None:
        return None
    if Path(path).stat().st_size < SAMPLE_TABLE_MIN_BYTES:  # demuxing small files is as fast, and exact
        return None
    tables = sample_table_index(path)
    if tables is None:
        return None
    pts, keys, _, scale = tables
    av = _av()
    try:
        ok = (Fraction(1, scale) == stream.time_base and len(pts) == int(stream.frames or len(pts))
              and matches_packets(container, stream, pts, keys))
        container.seek(0, stream=stream, backward=True)
    except av.error.FFmpegError:
        ok = False
    if not ok:
        log.debug("%s: sample tables disagree with the demuxer; indexing by demuxing", path)
        container.seek(0, stream=stream, backward=True)
        return None
    return pts.tolist(), pts[keys].tolist()


def _sorted_unique(values: list) -> np.ndarray:
    """np.unique for int64 timestamps, without its first-call import of numpy.ma
    (25 ms of the time to first frame)."""
    arr = np.sort(np.asarray(values, dtype=np.int64))
    if len(arr) > 1:
        keep = np.empty(len(arr), dtype=bool)
        keep[0] = True
        np.not_equal(arr[1:], arr[:-1], out=keep[1:])
        arr = arr[keep]
    return arr


#: Packets without timestamps tolerated in a file (open-GOP leading pictures of a mid-GOP cut: at most
#: one reorder depth); more, and the frames cannot be numbered.
_UNTIMED_MAX = 16

# libavformat's AVInputFormat flags (PyAV gives them as an int)
_AVFMT_TS_DISCONT = 0x0200
_AVFMT_NO_BYTE_SEEK = 0x8000


def _untimed_message(path: Path, container) -> str:
    name = container.format.name or "?"
    raw = ", a raw elementary stream" if name in ("h264", "hevc", "mpegvideo", "m4v", "h263", "vvc") else ""
    return (f"{path}: the video packets have no timestamps (container '{name}'{raw}), so its frames cannot be "
            "numbered or seeked; convert it with its real frame rate, e.g. "
            f"`ffmpeg -r 25 -i {Path(path).name} -c:v libx264 -crf 18 fixed.mp4` (`-c copy` instead of "
            "`-c:v libx264 -crf 18` is lossless and faster but keeps the frame order only for streams "
            "without B-frames: a stream without timestamps has no presentation times to copy)")


def _seeks_by_byte(container) -> bool:
    """Seek to keyframes by their byte offset, not their timestamp.

    MPEG-TS and MPEG-PS (``.ts``, ``.m2ts``, ``.mpg``, ``.vob``: what many
    surgical recorders write) have no seek index: FFmpeg seeks them by a
    binary search on decode timestamps that stops at whatever packet has a
    timestamp near the target, rarely the keyframe (then the decoder drops
    everything up to the *next* keyframe, and the frames in between are
    never output). libavformat marks such formats as having discontinuous
    timestamps. A byte seek to a keyframe packet's offset lands exactly on it
    in MPEG-TS (the demuxer resynchronises on the 188-byte packet that starts
    it). In MPEG-PS the offset FFmpeg reports for a video packet can lie
    after the start of its data (the parser joins frames across 2 KB packs),
    so the seek goes to the packet before it (the decoder drops that partial
    frame: it has no reference)."""
    flags = int(getattr(container.format, "flags", 0) or 0)
    return bool(flags & _AVFMT_TS_DISCONT) and not flags & _AVFMT_NO_BYTE_SEEK


def _make_index(path: Path, stream, pts: list, keys: list, key_bytes: Optional[Dict[int, int]] = None
                ) -> VideoIndex:
    """Presentation-ordered index from packet timestamps (shown frames) and keyframe timestamps
    (``key_bytes``: their packets' byte offsets, for containers seeked by byte)."""
    if not pts:
        raise VideoError(f"{path}: the video stream has zero frames")
    pts_arr = _sorted_unique(pts)  # presentation order
    if len(pts_arr) != len(pts):
        log.warning("%s: %d frames share a timestamp with another frame; kept one of each",
                    path, len(pts) - len(pts_arr))
    if not keys:
        raise VideoError(f"{path}: the video stream has no keyframe; it cannot be decoded")
    key_arr = _sorted_unique(keys)
    early = int(np.searchsorted(pts_arr, key_arr[0]))
    if early:
        # Shown before the first keyframe: they reference frames before the start of the file (a recording or
        # stream copy that began mid-GOP, open-GOP leading pictures); decoders drop them.
        log.info("%s: %d frames before the first keyframe cannot be decoded; the video starts at the keyframe",
                 path, early)
        pts_arr = pts_arr[early:]
    offsets = None
    if key_bytes is not None and all(int(k) in key_bytes for k in key_arr):
        offsets = np.array([key_bytes[int(k)] for k in key_arr], dtype=np.int64)
    header = int(stream.frames or 0)
    if header and header != len(pts_arr):
        log.info("%s: header says %d frames, the stream holds %d; using %d", path, header,
                 len(pts_arr), len(pts_arr))
    ctx = stream.codec_context
    return VideoIndex(
        pts=pts_arr,
        key_pts=key_arr,
        time_base=stream.time_base or Fraction(1, 1),
        codec=ctx.name,
        width=int(ctx.width or stream.width),
        height=int(ctx.height or stream.height),
        header_frames=header,
        average_rate=stream.average_rate or stream.guessed_rate,
        key_bytes=offsets,
    )


def _incomplete(container, stream, n_packets: int, pts: list) -> Optional[str]:
    """Why the file ends before its header says it should (cut-off copy or recording), or None.

    A header that promises *fewer* frames than the stream holds is simply
    wrong (common in AVI) and the index wins; one that promises more means
    data is missing."""
    header = int(stream.frames or 0)
    if header and n_packets < header:
        return f"the header lists {header} frames but only {n_packets} are present"
    if pts and len(container.streams) == 1:
        tb = float(stream.time_base or 0)
        expected = stream.duration * tb if stream.duration and tb else (container.duration or 0) / 1e6
        span = (max(pts) - min(pts)) * tb
        if expected and tb and span + 1 / 25 < expected - max(1.0, 0.05 * expected):
            return f"the header says {expected:.2f} s but frames stop at {span:.2f} s"
    return None


def _matroska_cut(path: Path, container) -> Optional[str]:
    """A Matroska/WebM file shorter than its Segment says (its size is
    written when recording ends); None when intact or of unknown size."""
    if "matroska" not in (container.format.name or ""):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)  # EBML header + Segment size
            file_size = fh.seek(0, 2)
    except OSError:
        return None

    def vint(pos: int, strip: bool):
        first = head[pos]
        length = 9 - first.bit_length() if first else 9
        if length > 8 or pos + length > len(head):
            raise ValueError("bad EBML number")
        value = int.from_bytes(head[pos:pos + length], "big")
        if strip:
            value &= (1 << (7 * length)) - 1
            if value == (1 << (7 * length)) - 1:
                value = -1  # unknown size (live recording)
        return value, pos + length

    try:
        ebml_id, pos = vint(0, strip=False)
        size, pos = vint(pos, strip=True)
        if ebml_id != 0x1A45DFA3 or size < 0:
            return None
        pos += size
        seg_id, pos = vint(pos, strip=False)
        seg_size, pos = vint(pos, strip=True)
    except (ValueError, IndexError):
        return None
    if seg_id != 0x18538067 or seg_size < 0 or pos + seg_size <= file_size:
        return None
    return f"it ends after {file_size} bytes, its header says {pos + seg_size}"


#: A gap in the frame timestamps bigger than this many frame durations marks a missing frame.
_GAP = 1.5
#: The most frames B-frame reordering can move (H.264/HEVC allow 16).
_REORDER_DEPTH = 16


def _readable_part(path: Path, index: "VideoIndex", problem: str, last_dts: Optional[int]) -> "VideoIndex":
    """The frames of a truncated file up to the first one that is missing.

    B-frames are stored after the later frames they refer to, so frames cut
    off with the end of the file can lie just before frames still present.
    Every frame shown no later than the last packet's decode time is present
    (a frame cannot be shown before it is decoded); after that, the frames
    are kept while their timestamps have no gap. So no frame number points
    at a frame that is not in the file."""
    pts = index.pts
    n = len(pts)
    if last_dts is None:  # no decode times: assume the deepest reordering
        safe = max(1, n - _REORDER_DEPTH)
    else:
        safe = max(1, int(np.searchsorted(pts, last_dts, side="right")))
    good = safe
    while good < n and pts[good] - pts[good - 1] <= _GAP * index.frame_ticks:
        good += 1
    kept = index.key_pts <= pts[good - 1]
    keys = index.key_pts[kept]
    if not len(keys):
        raise VideoError(f"{path}: the file is truncated or corrupt ({problem}): not one complete frame "
                         "could be read")
    readable = VideoIndex(pts=pts[:good].copy(), key_pts=keys, time_base=index.time_base, codec=index.codec,
                          width=index.width, height=index.height, header_frames=index.header_frames,
                          average_rate=index.average_rate, damaged_from=good, damage=problem,
                          key_bytes=None if index.key_bytes is None else index.key_bytes[kept])
    log.warning("%s: the file is truncated or corrupt (%s); frames 0-%d are readable", path, problem, good - 1)
    return readable


#: 8-bit pixel formats whose filter-graph RGB equals ``frame.reformat("rgb24")``
#: bit for bit (tests/test_video_access.py); other formats convert with reformat.
POOLED_RGB_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})


def _reformat_threaded(frame):
    """``frame.reformat("rgb24")`` with swscale's slice threads (the same pixels,
    tested; PyAV >= 14 has ``threads``): the first frame's conversion, which
    nothing else runs alongside (1080p: ~2.5 vs ~4-8 ms on 2 cores)."""
    try:
        return frame.reformat(format="rgb24", threads=0)
    except TypeError:
        return frame.reformat(format="rgb24")


class _FrameMissing(Exception):
    pass


def _resolve(index) -> VideoIndex:
    """A :class:`VideoIndex`, or the one an :class:`IndexBuilder` builds (waiting for it)."""
    return index.result() if isinstance(index, IndexBuilder) else index


class PyAVReader:
    """One open container and decoder, positioned after the last frame read.

    ``index``: a :class:`VideoIndex`, or an :class:`IndexBuilder` whose index
    is waited for when first needed. ``first``: ``opened`` comes from
    :func:`open_first` (slice-threaded decoder at the start of the file, no
    index yet): frame 0 is the first frame the decoder outputs, decoded
    without the index (the time to first frame); any other read first swaps
    in a frame-threaded container.

    Not thread-safe (FrameSource holds a lock around ``read``)."""

    #: While decoding forward to a far target, let the decoder drop frames
    #: nothing else references (most B-frames): ~40% less work per seek.
    SKIP_NONREF = True
    #: Packets already sent to the decoder but not yet output are at most the
    #: reorder depth plus frame-thread delay; only skip when the target is
    #: further ahead than that (its packet cannot have been sent yet).
    _SKIP_MIN_DISTANCE = 40

    def __init__(self, path: Path, index, out_size: Optional[tuple] = None,
                 opened: Optional[tuple] = None, first: bool = False) -> None:
        self.path = path
        self._index: Optional[VideoIndex] = index if isinstance(index, VideoIndex) else None
        self._builder: Optional[IndexBuilder] = index if isinstance(index, IndexBuilder) else None
        self.out_size = out_size  # (width, height) when downscaling
        # opened: (container, stream) from open_indexed; the first read seeks, so its position does not matter
        self._container, self._stream = opened if opened is not None else _open_container(path)
        self._ctx = self._stream.codec_context
        self._first = first and opened is not None  # see the class doc
        if not self._first:
            self._ctx.thread_type = THREAD_TYPE
        self._frames: Optional[Iterator] = None
        self._pos: Optional[int] = None  # presentation index the decoder will output next
        self._bad: Optional[int] = None  # frame whose packet failed to decode
        self._skip_until: Optional[int] = None  # PTS of the packet that ends skipping
        self._skipping = False
        #: PTS of the frame returned as frame 0 before the index existed (None: read with the index)
        self.first_frame_pts: Optional[int] = None
        self._resume = False  # frame 0 came from the first-frame container: swap it on the next read
        self._first_decoded = None  # that frame 0, decoded (YUV)
        self._rgb_graph = None  # (key, graph): FFmpeg filter graph converting to RGB (see _convert)
        self.seeks = 0

    @property
    def index(self) -> VideoIndex:
        if self._index is None:
            self._index = self._builder.result()
        return self._index

    def close(self) -> None:
        self._frames = None
        self._rgb_graph = None
        self._first_decoded = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def _first_frame(self) -> Optional[np.ndarray]:
        """Frame 0 without the index: the first frame the decoder outputs,
        when it decoded cleanly and its timestamp is what the index will call
        frame 0: the stream's start time, or (AVI: start time 0, first frame 1)
        the earliest of the packets read so far; else None (the caller reads
        it the indexed way, and the errors come from there). Checked against
        the index once it exists (``PyAVReaderPool.first_frame_matches_index``)."""
        av = _av()
        start = self._stream.start_time
        earliest = None
        try:
            for packet in self._container.demux(self._stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                # The file starts with the keyframe shown first: decode it alone and drain the decoder, rather
                # than also decoding the frames B-frame reordering holds back (this container is swapped out
                # before the next read). 1080p H.264 with B-frames: ~6 instead of ~17 ms.
                alone = (earliest is None and packet.size and packet.is_keyframe and not packet.is_discard
                         and start is not None and ts == start)
                if ts is not None and packet.size and not packet.is_discard:
                    earliest = ts if earliest is None else min(earliest, ts)
                frames = packet.decode()
                if alone:
                    frames = list(frames) + list(self._ctx.decode(None))
                    if not frames:
                        return None
                for frame in frames:
                    if frame.is_corrupt or frame.pts is None or frame.pts not in (start, earliest):
                        return None
                    # frame.reformat: no filter graph to set up for one frame; same pixels (tested)
                    rgb = self._convert(frame, 0, first=True)
                    self.first_frame_pts = int(frame.pts)
                    self._first_decoded = frame  # frame 0 again (before any other read) converts it again
                    return rgb
        except (av.error.FFmpegError, VideoError):
            return None
        return None

    def _swap_container(self) -> None:
        """Replace the first-frame container by a frame-threaded one: the one
        the index build opened (no second probe of the file) or a new one."""
        _ = self.index  # every read after the first needs it (and raises its errors); the build's container with it
        opened = self._builder.take_opened() if self._builder is not None else None
        self._container.close()
        self._container, self._stream = opened if opened is not None else _open_container(self.path)
        self._ctx = self._stream.codec_context
        self._ctx.thread_type = THREAD_TYPE
        self._frames, self._pos, self._skipping = None, None, False

    def _set_skipping(self, on: bool) -> None:
        if on != self._skipping:
            self._ctx.skip_frame = "NONREF" if on else "DEFAULT"
            self._skipping = on

    def _decoded(self) -> Iterator:
        av = _av()
        for packet in self._packets():
            end = packet is None or packet.size == 0
            ts = None if packet is None else (packet.pts if packet.pts is not None else packet.dts)
            if self._skip_until is not None:
                if end or ts == self._skip_until:  # the target itself is decoded
                    self._skip_until = None
                self._set_skipping(self._skip_until is not None)
            try:
                frames = self._ctx.decode(None) if packet is None else packet.decode()
            except av.error.FFmpegError as exc:
                self._bad = self.index.index_of(ts)
                log.warning("%s: frame %s could not be decoded: %s", self.path, self._bad, exc)
                continue
            for frame in frames:
                if frame.is_corrupt:  # concealed decoding errors: the group of pictures is damaged
                    j = self.index.index_of(frame.pts if frame.pts is not None else frame.dts)
                    if j is not None:
                        self._damaged(self.index.keyframe_for(j))
                yield frame

    def _packets(self) -> Iterator:
        """Demuxed packets; where the file is cut off, an empty packet that
        flushes the frames still inside the decoder (the last readable ones)."""
        av = _av()
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                log.debug("%s: demuxing stopped (%s); flushing the decoder", self.path, exc)
                yield None
                return
            if packet.is_corrupt and self.index.damaged_from is not None and packet.size \
                    and self.index.index_of(packet.pts) is None:
                # the cut-off end: sending it to a frame-threaded decoder loses the frames still inside
                yield None
                return
            yield packet

    def _seek(self, key_pos: int) -> None:
        av = _av()
        target = int(self.index.key_pts[key_pos])
        self._skip_until = None
        self._set_skipping(False)
        try:
            if self.index.key_bytes is not None:  # MPEG-TS/PS (see _seeks_by_byte)
                self._container.seek(int(self.index.key_bytes[key_pos]), stream=self._stream,
                                     unsupported_byte_offset=True)
            else:
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{self.path}: seeking failed ({exc})") from exc
        self.seeks += 1
        self._frames = self._decoded()
        self._pos = None
        self._bad = None

    def read(self, i: int) -> np.ndarray:
        if self._container is None:
            raise VideoError(f"{self.path}: the source is closed")
        if self._first:
            self._first = False
            frame = self._first_frame() if i == 0 else None
            if frame is not None:
                # positioned after frame 0 as far as the pool and the seek count go (see _resume)
                self._pos, self._resume = 1, True
                self.seeks += 1
                return frame
            self._swap_container()
        elif self._resume and i == 0 and (decoded := self._first_decoded) is not None:
            return self._convert(decoded, 0, first=True)  # (a local: the index check may drop it meanwhile)
        elif self._resume:
            # Reading on from frame 0: the frame-threaded container decodes from keyframe 0 again (a few ms,
            # once); not counted as a seek, as the decoder that read frame 0 would have gone on without one.
            self._resume, self._first_decoded = False, None
            index = self.index
            goes_on = 1 <= i and int(index.key_first[index.keyframe_for(i)]) <= 1
            self._swap_container()
            seeks = self.seeks
            try:
                return self.read(i)
            finally:
                if goes_on and self.seeks > seeks:
                    self.seeks -= 1
        try:
            return self._read(i, allow_skip=self.SKIP_NONREF)
        except _FrameMissing:
            if not self.SKIP_NONREF:
                raise VideoError(self._missing_message(i)) from None
        # A frame dropped as "non-reference" was wanted after all: decode everything.
        self._frames, self._pos = None, None
        try:
            return self._read(i, allow_skip=False)
        except _FrameMissing:
            raise VideoError(self._missing_message(i)) from None

    def _missing_message(self, i: int) -> str:
        detail = f" (corrupt data at frame {self._bad})" if self._bad is not None else ""
        return f"{self.path}: frame {i} could not be decoded{detail}"

    def _read(self, i: int, allow_skip: bool) -> np.ndarray:
        index = self.index
        key_pos = index.keyframe_for(i)
        # Decode forward from where we are when that is no more work than a
        # seek to the keyframe (sequential reads never re-seek).
        if self._frames is None or self._pos is None or not (index.key_first[key_pos] <= self._pos <= i):
            self._seek(key_pos)
        after_seek = self._pos is None
        if allow_skip and (after_seek or i - self._pos >= self._SKIP_MIN_DISTANCE):
            self._skip_until = int(index.pts[i])
        try:
            while True:
                frame = self._next_frame(i)
                if frame is None:  # stream ended before frame i
                    break
                j = index.index_of(frame.pts if frame.pts is not None else frame.dts)
                if j is None:
                    continue
                if after_seek and j > i and key_pos > 0:
                    # The demuxer landed after the keyframe we asked for: back off one.
                    key_pos -= 1
                    self._seek(key_pos)
                    if allow_skip:
                        self._skip_until = int(index.pts[i])
                    continue
                after_seek = False
                self._pos = j + 1
                if j == i:
                    return self._convert(frame, i)
                if j > i:  # frame i never came out of the decoder
                    break
        finally:
            self._skip_until = None
            self._set_skipping(False)
        self._frames, self._pos = None, None
        raise _FrameMissing(i)

    def _damaged(self, k: int) -> None:
        """Group of pictures ``k`` decoded with errors: a visible warning, once.
        Raised when the flagged frame comes out of the decoder, which can be
        after B-frames of the group that show the damage too: the warning
        names the whole group."""
        index = self.index
        index.corrupt_gops.add(k)
        if k not in index._warned_gops:
            index._warned_gops.add(k)
            first, last = index.gop_frames(k)
            log.warning("%s: frames %d-%d are damaged (the decoder met corrupt data in the file and concealed it): "
                        "they may show garbage; re-export or re-copy the video if they matter", self.path, first, last)

    def _next_frame(self, i: int):
        av = _av()
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except av.error.FFmpegError as exc:
            self._frames, self._pos = None, None
            raise VideoError(f"{self.path}: reading frame {i} failed ({exc})") from exc

    def _convert(self, frame, i: int, first: bool = False) -> np.ndarray:
        """RGB (H, W, 3) uint8 of a decoded frame, a view of an FFmpeg frame
        buffer (the array keeps it alive).

        Full size: through an FFmpeg filter graph (``format=rgb24``), whose
        output frames come from a buffer pool. ``frame.reformat`` allocated a
        fresh 6 MB buffer per 1080p frame, and glibc returned each to the
        system when freed, so every frame paid ~1,500 page faults: 2-3 ms of
        a 5 ms frame (benchmarks/video_io.py, sequential). Same pixels as
        ``reformat`` for the 8-bit formats in ``POOLED_RGB_FORMATS`` (tested);
        others (10-bit: the filter's chroma and dithering differ by up to 59
        levels at edges) and downscaling (AREA) use ``reformat``."""
        av = _av()
        try:
            if self.out_size is None and not first and frame.format.name in POOLED_RGB_FORMATS:
                out = self._pooled_rgb(frame)
            elif self.out_size is None and first:
                out = _reformat_threaded(frame)
            elif self.out_size is None:
                out = frame.reformat(format="rgb24")
            else:
                w, h = self.out_size
                out = frame.reformat(format="rgb24", width=w, height=h, interpolation="AREA")
            plane = out.planes[0]
            rows = np.frombuffer(plane, np.uint8).reshape(out.height, plane.line_size)
            return rows[:, : out.width * 3].reshape(out.height, out.width, 3)  # a view, rows may be padded
        except (ValueError, av.error.FFmpegError) as exc:
            raise VideoError(f"{self.path}: frame {i} could not be converted to RGB ({exc})") from exc

    def _pooled_rgb(self, frame):
        """``frame`` in rgb24 from this reader's filter graph (rebuilt when the
        stream's size or pixel format changes mid-video)."""
        key = (frame.width, frame.height, frame.format.name)
        if self._rgb_graph is None or self._rgb_graph[0] != key:
            graph = _av().filter.Graph()
            source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                      time_base=self._stream.time_base)
            convert = graph.add("format", "rgb24")
            sink = graph.add("buffersink")
            source.link_to(convert)
            convert.link_to(sink)
            graph.configure()
            self._rgb_graph = (key, graph)
        graph = self._rgb_graph[1]
        graph.push(frame)
        return graph.pull()


class PyAVReaderPool:
    """A few decoders positioned at different places in the video.

    Scrubbing back and forth inside a long GOP would otherwise re-decode from
    the keyframe on every backward step; with several decoders the one
    closest before the target decodes forward. Decoders are opened only when
    a seek is needed, so sequential reading uses just one."""

    SEEK_COST = 3  # frames: a seek plus decoder restart costs about this much
    #: every frame read is a new RGB buffer (reformat, or a filter-graph frame this
    #: reader drops after converting) that only the returned array holds
    returns_fresh_frames = True

    def __init__(self, path: Path, index, out_size: Optional[tuple] = None, size: int = 3,
                 opened: Optional[tuple] = None, first: bool = False) -> None:
        # index: a VideoIndex or an IndexBuilder (see PyAVReader)
        self.path, self._index_or_builder, self.out_size, self.size = path, index, out_size, size
        self._readers = [PyAVReader(path, index, out_size, opened, first)]  # fails early for unreadable files
        self._used = [0]
        self._clock = 0

    @property
    def index(self) -> VideoIndex:
        return self._readers[0].index if self._readers else _resolve(self._index_or_builder)

    @property
    def seeks(self) -> int:
        return sum(r.seeks for r in self._readers)

    def _cost(self, reader: PyAVReader, i: int, key_first: int) -> int:
        pos = reader._pos
        if (reader._frames is not None or reader._resume) and pos is not None and key_first <= pos <= i:
            return i - pos
        return i - key_first + self.SEEK_COST

    def read(self, i: int) -> np.ndarray:
        first = self._readers[0] if self._readers else None
        if first is not None and (first._first or (i == 0 and first._first_decoded is not None)):
            # frame 0 before the index exists, or again from its decoded frame (PyAVReader)
            self._clock += 1
            self._used[0] = self._clock
            return self._readers[0].read(i)
        key_first = int(self.index.key_first[self.index.keyframe_for(i)])
        costs = [self._cost(r, i, key_first) for r in self._readers]
        best = int(np.argmin(costs))
        if costs[best] >= i - key_first + self.SEEK_COST and len(self._readers) < self.size:
            if any(r._pos is not None for r in self._readers):  # keep positioned decoders where they are
                self._readers.append(PyAVReader(self.path, self._index_or_builder, self.out_size))
                self._used.append(0)
                best = len(self._readers) - 1
        elif costs[best] >= i - key_first + self.SEEK_COST:
            best = int(np.argmin(self._used))  # all must seek: reuse the least recently used
        self._clock += 1
        self._used[best] = self._clock
        return self._readers[best].read(i)

    def first_frame_matches_index(self) -> bool:
        """False when the frame returned as frame 0 before the index existed
        is not the index's frame 0 (the caller drops it from its cache)."""
        pts = self._readers[0].first_frame_pts if self._readers else None
        if pts is None or pts == int(self.index.pts[0]):
            return True
        self._readers[0]._first_decoded = None
        return False

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []
