"""``FrameSource``: a lazy, read-only (T, H, W, 3) uint8 array over a video,
TIFF stack or frame folder.

napari (and numpy code) index it like an array; only the frames asked for are
decoded. The format backends only provide a *reader* (``read(source_index)``
-> one RGB frame at output size); this class adds numpy indexing semantics,
the byte-capped LRU cache, background prefetch and thread safety.
"""
from __future__ import annotations

import logging
import operator
import threading
from typing import Callable, Iterator, List, Optional, Protocol, Tuple, Union

import numpy as np

from ..errors import FrameIndexError, VideoError
from .cache import FrameCache
from .metadata import VideoMetadata

log = logging.getLogger(__name__)


class FrameReader(Protocol):
    """What a format backend provides. Not thread-safe: FrameSource serialises calls."""

    def read(self, source_index: int) -> np.ndarray:  # (H, W, 3) uint8, output size
        ...

    # optional: ``returns_fresh_frames = True`` when every array ``read`` returns is
    # the caller's alone (no buffer the reader reuses or keeps): open_video's first
    # frame is then handed to the first caller without a copy

    def close(self) -> None:
        ...


class PendingMetadata:
    """Metadata not known yet (a video's frame index is built after its first
    frame is shown): the path and the output frame size now, the full
    :class:`VideoMetadata` from ``resolve()`` (which may wait for the index
    and raises what indexing found). ``start()`` begins building it in the
    background; ``cancel()``: the source closed before it was needed."""

    def __init__(self, path: str, width: int, height: int, resolve: Callable[[], VideoMetadata],
                 start: Callable[[], None] = lambda: None, cancel: Callable[[], None] = lambda: None) -> None:
        self.path, self.width, self.height = path, width, height
        self.resolve, self.start, self.cancel = resolve, start, cancel


def _is_int(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


class FrameSource:
    """Lazy (T, H, W, 3) uint8 array. Use :func:`surgseg_core.io.open_video`.

    Thread-safe: reads from napari's GUI thread and worker threads are
    serialised on the decoder; cached frames are served without waiting.
    Returned arrays are fresh copies (the cache is never exposed).

    A video opens before its frame index exists (``PendingMetadata``): frame 0
    is there at once; ``len()``, ``shape``, ``metadata`` and any other frame
    wait for the index (built by the first thread that needs it) and raise what
    indexing found.
    """

    #: ``np.asarray(src)`` and any single indexing request larger than this
    #: raise :class:`VideoError` instead of filling memory with the whole video.
    max_array_bytes: int = 2 * 1024**3

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        metadata: Union[VideoMetadata, PendingMetadata],
        make_reader: Callable[[], FrameReader],
        *,
        cache_mb: float = 256,
        prefetch: int = 0,
    ) -> None:
        self._path = metadata.path
        self._frame_shape = (metadata.height, metadata.width, 3)
        self._make_reader = make_reader
        self._reader: Optional[FrameReader] = None
        self._lock = threading.RLock()  # guards the main reader
        self._cache = FrameCache(int(cache_mb * 1024 * 1024))
        # PendingMetadata: frame 0 can be read (its source index is 0: ranges starting elsewhere resolve
        # first); the frame count, timestamps etc. wait for _resolve()
        self._pending: Optional[PendingMetadata] = None
        self._metadata: Optional[VideoMetadata] = None
        self._meta_lock = threading.Lock()
        self._first_read = False  # frame 0 was read (so it exists, whatever the frame count)
        #: frame 0 as open_video read it, for the first caller that indexes it (see _take_handoff)
        self._handoff: Optional[np.ndarray] = None
        if isinstance(metadata, PendingMetadata):
            self._pending = metadata
        else:
            self._set_metadata(metadata)
        self._closed = False
        self._prefetch = int(prefetch)
        self._pf_cond = threading.Condition()
        self._pf_next: Optional[Tuple[int, int]] = None  # (frame just read, direction +1 / -1)
        self._pf_last: Optional[int] = None  # the frame read before, to tell the direction of play
        self._pf_thread: Optional[threading.Thread] = None
        self._reader = make_reader()

    def _set_metadata(self, metadata: VideoMetadata) -> None:
        self._src_idx = np.asarray(metadata.source_indices, dtype=np.int64)
        self._shape = (len(self._src_idx), metadata.height, metadata.width, 3)
        self._metadata = metadata  # last: other threads test it without the lock

    def _resolve(self) -> VideoMetadata:
        """Metadata, waiting for the video's index where it is still being built
        (raises what indexing found, e.g. a damaged file, in the calling thread)."""
        meta = self._metadata
        if meta is None:
            with self._meta_lock:
                if self._metadata is None:
                    meta = self._pending.resolve()
                    check = getattr(self._reader, "first_frame_matches_index", None)
                    if check is not None and not check():
                        log.warning("%s: the first frame shown was not the video's frame 0; reading it again",
                                    self._path)
                        self._cache.clear()
                        self._handoff = None
                    self._set_metadata(meta)
                meta = self._metadata
        return meta

    @property
    def metadata(self) -> VideoMetadata:
        """What the source knows about its file (for a video, waits for its frame index)."""
        return self._resolve()

    def damaged_frames(self) -> List[int]:
        """This source's frames known (from what was decoded so far) to come
        from damaged parts of the file; each was also named in a warning."""
        self._resolve()
        index = getattr(self._reader, "index", None)
        damaged = set(index.damaged_frames()) if index is not None and hasattr(index, "damaged_frames") else set()
        return [i for i, j in enumerate(self._src_idx.tolist()) if j in damaged]

    # ----------------------------------------------------------------- array protocol
    @property
    def shape(self) -> Tuple[int, int, int, int]:
        self._resolve()
        return self._shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size  # uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        m = self._metadata
        if m is None:  # no waiting for an index in a repr
            return f"<FrameSource {self._path!r} shape=(?,) + {self._frame_shape} (indexing)>"
        return f"<FrameSource {m.path!r} {m.format} shape={self._shape} fps={m.fps}>"

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a FrameSource cannot be viewed as an array without copying")
        self._check_size(self.nbytes, "converting the whole source to an array")
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, frame in self.iter_frames():
            yield frame

    def __getitem__(self, key) -> np.ndarray:
        tkey, rest = self._split_key(key)
        idx, scalar = self._time_indices(tkey)
        frame_shape = self._frame_shape
        dummy = np.broadcast_to(np.zeros((), np.uint8), frame_shape)
        basic = all(_is_int(k) or isinstance(k, slice) for k in rest)
        if basic:
            crop_shape = dummy[rest].shape
            self._check_size(idx.size * int(np.prod(crop_shape)), "this indexing request")
            if scalar:
                frame = self._take_handoff() if idx == 0 else None
                if frame is not None:
                    return frame if not rest else np.array(frame[rest])
                return np.array(self._get(int(idx))[rest])
            unique = np.unique(idx)
            if unique.size == idx.size and np.all(np.diff(idx.ravel()) > 0):  # common: a plain slice
                out = np.empty((idx.size,) + crop_shape, np.uint8)
                for j, i in enumerate(idx.ravel()):
                    out[j] = self._get(int(i))[rest]
                return out.reshape(idx.shape + crop_shape)
            crops = np.empty((unique.size,) + crop_shape, np.uint8)
            for j, i in enumerate(unique):
                crops[j] = self._get(int(i))[rest]
            return crops[np.searchsorted(unique, idx)]
        # Advanced indexing on the frame axes: stack the needed frames and let
        # numpy apply the exact same key (so semantics match numpy's).
        if scalar or isinstance(tkey, slice):  # keep the time key basic: a slice stays a slice
            needed, mapped = np.atleast_1d(idx), (0 if scalar else slice(None))
        else:
            needed = np.unique(idx)
            mapped = np.searchsorted(needed, idx)
        self._check_size(needed.size * int(np.prod(frame_shape)), "this indexing request")
        stack = np.empty((needed.size,) + frame_shape, np.uint8)
        for j, i in enumerate(needed):
            stack[j] = self._get(int(i))
        return np.array(stack[(mapped,) + tuple(rest)])

    # ----------------------------------------------------------------- public extras
    def iter_frames(self, start: int = 0, stop: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` for ``start <= index < stop`` in order.

        Uses its own reader (its own decoder for videos), so a long sequential
        pass (export, tracking) neither thrashes the random-access decoder nor
        evicts the frames napari has cached.
        """
        n = len(self)
        stop = n if stop is None else stop
        if not (_is_int(start) and _is_int(stop)) or not (0 <= start <= stop <= n):
            raise VideoError(
                f"{self._path}: iter_frames range start={start}, stop={stop} is outside 0..{n}"
            )
        self._check_open()
        reader = self._make_reader()
        try:
            for i in range(int(start), int(stop)):
                self._check_open()
                frame = self._cache.get(i)
                if frame is None:
                    frame = reader.read(self._source_index(i))
                else:
                    frame = frame.copy()
                yield i, frame
        finally:
            reader.close()

    @property
    def cache(self) -> FrameCache:
        return self._cache

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._pf_cond:
            self._pf_cond.notify_all()
        if self._metadata is None and self._pending is not None:
            self._pending.cancel()  # a background index build stops (a later .metadata builds it again)
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._handoff = None
        self._cache.clear()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ----------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise VideoError(f"{self._path}: the source is closed")

    def _check_size(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_array_bytes:
            raise VideoError(
                f"{self._path}: {what} would need {nbytes / 2**30:.1f} GiB in memory "
                f"(limit {self.max_array_bytes / 2**30:.1f} GiB); index fewer frames, or open the video "
                "with a frame range, stride or downscale"
            )

    def _split_key(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        n_ellipsis = sum(k is Ellipsis for k in key)
        if n_ellipsis > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ellipsis:
            pos = next(i for i, k in enumerate(key) if k is Ellipsis)
            n_real = sum(k is not None and k is not Ellipsis for k in key)
            key = key[:pos] + (slice(None),) * (4 - n_real) + key[pos + 1:]
        if not key:
            key = (slice(None),)
        if key[0] is None:
            raise IndexError("np.newaxis before the time axis is not supported by FrameSource")
        if sum(k is not None for k in key) > 4:
            raise IndexError(f"too many indices for a FrameSource of shape {self.shape}")
        return key[0], key[1:]

    def _time_indices(self, tkey):
        if self._metadata is None and _is_int(tkey) and operator.index(tkey) == 0 and self._first_read:
            return np.int64(0), True  # frame 0 exists: no need to wait for the frame count
        n = len(self)
        if _is_int(tkey):
            i = operator.index(tkey)
            if not -n <= i < n:
                raise self._out_of_range(f"frame index {i}")
            return np.int64(i % n), True
        if isinstance(tkey, slice):
            return np.arange(*tkey.indices(n), dtype=np.int64), False
        arr = np.asarray(tkey)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean frame mask has shape {arr.shape}, expected ({n},)")
            return np.flatnonzero(arr), False
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(f"frame indices must be integers, slices or boolean masks, got {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise self._out_of_range("a frame index")
        return arr % n if n else arr, False

    def _out_of_range(self, what: str) -> FrameIndexError:
        m = self.metadata
        damage = f"; {m.damage}" if getattr(m, "damage", None) else ""
        return FrameIndexError(f"{m.path}: {what} is out of range for {len(self)} frames{damage}")

    def _source_index(self, i: int) -> int:
        if self._metadata is None:
            if i == 0:  # frame 0 of a pending source is source frame 0 (see __init__)
                return 0
            self._resolve()
        return int(self._src_idx[i])

    def _read_first(self) -> None:
        """open_video's read of frame 0 (it fails now, with a clear message,
        rather than in the viewer later). The frame is kept for the first
        ``src[0]``, which gets it without a copy (the naive readers' one
        buffer, not two: a 1080p copy costs ~2 ms of the time to first frame),
        or for the cache, whichever asks first."""
        frame = self._cache.get(0)
        if frame is None:
            with self._lock:
                self._check_open()
                frame = self._reader.read(self._source_index(0))
                if getattr(self._reader, "returns_fresh_frames", False) and frame.flags.writeable \
                        and frame.flags.c_contiguous:
                    self._handoff = frame
                else:
                    self._cache.put(0, frame)
        self._first_read = True
        self._after_read(0)

    def _take_handoff(self) -> Optional[np.ndarray]:
        if self._handoff is None:
            return None
        with self._lock:
            frame, self._handoff = self._handoff, None
        if frame is not None:
            self._after_read(0)
        return frame  # nobody else holds it; the cache gets frame 0 when it is read again

    def _get(self, i: int) -> np.ndarray:
        frame = self._cache.get(i)
        if frame is None:
            with self._lock:
                self._check_open()
                frame = self._cache.get(i)  # the prefetcher may have decoded it meanwhile
                if frame is None:
                    if i == 0 and self._handoff is not None:
                        frame, self._handoff = self._handoff, None
                    else:
                        frame = self._reader.read(self._source_index(i))
                    self._cache.put(i, frame)
        if i == 0:
            self._first_read = True
        self._after_read(i)
        return frame

    def _after_read(self, i: int) -> None:
        if self._prefetch > 0:
            # read ahead in the direction of play: stepping backwards reads the frames before
            direction = -1 if self._pf_last is not None and i < self._pf_last else 1
            self._pf_last = i
            self._schedule_prefetch(i, direction)

    # ----------------------------------------------------------------- prefetch
    def _schedule_prefetch(self, current: int, direction: int = 1) -> None:
        with self._pf_cond:
            if self._pf_thread is None:
                self._pf_thread = threading.Thread(
                    target=self._prefetch_loop, name=f"surgseg-prefetch-{id(self):x}", daemon=True
                )
                self._pf_thread.start()
            self._pf_next = (current, direction)
            self._pf_cond.notify()

    def _ahead(self, current: int, direction: int) -> range:
        """The ``prefetch`` frames after ``current`` (forward) or before it
        (backward). Backward frames are decoded in ascending order: one seek
        to their keyframe, then sequential decoding, instead of one seek and
        a run from the keyframe per frame. At most half the cache's cap, so
        reading ahead never evicts the frames just read ahead (or shown)."""
        frame_bytes = max(1, self._frame_shape[0] * self._frame_shape[1] * 3)
        n = min(self._prefetch, self._cache.max_bytes // (2 * frame_bytes))
        if direction > 0:
            return range(current + 1, min(current + 1 + n, len(self)))
        return range(max(0, current - n), current)

    def _prefetch_loop(self) -> None:
        while True:
            with self._pf_cond:
                while self._pf_next is None and not self._closed:
                    self._pf_cond.wait()
                if self._closed:
                    return
                (current, direction), self._pf_next = self._pf_next, None
            for j in self._ahead(current, direction):
                if self._closed or self._pf_next is not None:  # closed, or the viewer moved on
                    break
                if j in self._cache:
                    continue
                try:
                    with self._lock:
                        if self._closed:
                            return
                        if j not in self._cache:
                            self._cache.put(j, self._reader.read(self._source_index(j)))
                except Exception as exc:  # the foreground read reports it properly
                    log.debug("prefetch of frame %d stopped: %s", j, exc)
                    break
