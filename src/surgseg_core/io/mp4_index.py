"""Frame index of an MP4/MOV video track straight from its sample tables.

Why hand-written: demuxing every packet (the general index) reads the whole
file, which for an hour-long recording means seconds of I/O before the first
frame. MP4 stores every sample's timing and keyframe flag in the ``moov`` box
(``stts``, ``ctts``, ``stss``, ``elst``); reading those takes milliseconds.
PyAV does not expose FFmpeg's parsed sample index, and no maintained Python
library we depend on does this, so we parse the few boxes needed here.

Only the plain, common layout is handled (one video track, not fragmented,
at most one leading empty edit and one edit covering all samples). Anything
else returns None and the caller demuxes. The result is also checked against
packets demuxed from the start and from the last keyframe, so a layout we
misread also falls back rather than mis-numbering frames.
"""
from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _boxes(data: bytes, start: int = 0, end: Optional[int] = None) -> Iterator[Tuple[bytes, int, int]]:
    """(type, payload_start, payload_end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"bad box {kind!r} at {pos}")
        yield kind, pos + header, pos + size
        pos += size


def _read_moov(fh: BinaryIO) -> Optional[bytes]:
    fh.seek(0, 2)
    file_size = fh.tell()
    pos, moov = 0, None
    while pos + 8 <= file_size:
        fh.seek(pos)
        head = fh.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = file_size - pos
        if size < header:
            return None
        if kind in (b"moof", b"mfra"):
            return None  # fragmented MP4: samples are not all in moov
        if kind == b"moov":
            if size > 256 * 2**20:
                return None
            fh.seek(pos + header)
            moov = fh.read(size - header)
        pos += size
    return moov


def lacks_moov(path: Path) -> bool:
    """An MP4/MOV file with media data but no ``moov`` box: a recording cut
    off before its index (written last by most recorders) was saved."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            file_size = fh.tell()
            pos, kinds = 0, set()
            while pos + 8 <= file_size:
                fh.seek(pos)
                head = fh.read(16)
                size, kind = struct.unpack(">I4s", head[:8])
                if size == 1:
                    size = struct.unpack(">Q", head[8:16])[0]
                elif size == 0:
                    size = file_size - pos
                if size < 8:
                    break
                kinds.add(kind)
                pos += size
    except (OSError, struct.error):
        return False
    return b"ftyp" in kinds and b"mdat" in kinds and b"moov" not in kinds


def _full_box(data: bytes, start: int) -> Tuple[int, int]:
    return data[start], start + 4  # version, payload after version+flags


def _video_track(moov: bytes) -> Optional[Dict[str, object]]:
    movie_scale = None
    for kind, s, e in _boxes(moov):
        if kind == b"mvhd":
            version, p = _full_box(moov, s)
            movie_scale = struct.unpack(">I", moov[p + (16 if version else 8):][:4])[0]
        if kind != b"trak":
            continue
        track: Dict[str, object] = {}
        stack = [(s, e)]
        while stack:
            a, b = stack.pop()
            for k, ps, pe in _boxes(moov, a, b):
                if k in _CONTAINERS:
                    stack.append((ps, pe))
                else:
                    track[k.decode("latin-1")] = (ps, pe)
        hdlr = track.get("hdlr")
        if hdlr and moov[hdlr[0] + 8:hdlr[0] + 12] == b"vide":
            track["movie_scale"] = movie_scale
            return track
    return None


def _table(moov: bytes, box, fmt: str) -> Tuple[int, np.ndarray]:
    version, p = _full_box(moov, box[0])
    count = struct.unpack(">I", moov[p:p + 4])[0]
    width = np.dtype(fmt).itemsize
    if count * width > box[1] - p - 4:
        raise ValueError("table larger than its box")
    return version, np.frombuffer(moov, dtype=np.dtype(fmt), count=count, offset=p + 4) if count else np.zeros(0)


def sample_table_index(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(pts per sample in decode order, keyframe mask, is_shown mask, track timescale) or None."""
    try:
        with open(path, "rb") as fh:
            moov = _read_moov(fh)
        if moov is None:
            return None
        track = _video_track(moov)
        if track is None or "stts" not in track or "mdhd" not in track:
            return None
        version, p = _full_box(moov, track["mdhd"][0])
        scale = struct.unpack(">I", moov[p + (16 if version else 8):][:4])[0]
        _, stts = _table(moov, track["stts"], ">u4,>u4")
        counts = stts["f0"].astype(np.int64) if stts.size else np.zeros(0, np.int64)
        deltas = stts["f1"].astype(np.int64) if stts.size else np.zeros(0, np.int64)
        durations = np.repeat(deltas, counts)
        n = len(durations)
        if n == 0 or not scale:
            return None
        dts = np.concatenate([[0], np.cumsum(durations)[:-1]])
        pts = dts.copy()
        if "ctts" in track:
            _, ctts = _table(moov, track["ctts"], ">u4,>i4")
            offsets = np.repeat(ctts["f1"].astype(np.int64), ctts["f0"].astype(np.int64))
            if len(offsets) != n:
                return None
            pts = dts + offsets
        keys = np.ones(n, bool)
        if "stss" in track:
            _, stss = _table(moov, track["stss"], ">u4")
            keys[:] = False
            sync = stss.astype(np.int64) - 1
            if sync.size and (sync.min() < 0 or sync.max() >= n):
                return None
            keys[sync] = True
        shift = 0
        if "elst" in track:
            version, p = _full_box(moov, track["elst"][0])
            count = struct.unpack(">I", moov[p:p + 4])[0]
            fmt = ">qqhh" if version else ">iihh"
            size = struct.calcsize(fmt)
            edits = [struct.unpack(fmt, moov[p + 4 + k * size:p + 4 + (k + 1) * size]) for k in range(count)]
            movie_scale = track.get("movie_scale") or scale
            empty = [e for e in edits if e[1] == -1]
            real = [e for e in edits if e[1] != -1]
            if len(real) > 1 or (edits and edits[0][1] != -1 and empty) or any(e[2] != 1 for e in real):
                return None  # several edits, or a rate change: let FFmpeg do it
            offset = sum(e[0] for e in empty) * scale // movie_scale
            media_time = real[0][1] if real else 0
            if media_time > pts.min():
                return None  # samples before the edit start (trimmed file): FFmpeg discards those
            if real and real[0][0]:
                seg_end = media_time + real[0][0] * scale / movie_scale
                if pts.max() + durations[-1] > seg_end + durations.max():
                    return None  # edit ends before the samples do
            shift = offset - media_time
        return pts + shift, keys, np.ones(n, bool), int(scale)
    except (ValueError, struct.error, OSError, IndexError, KeyError, TypeError) as exc:
        log.debug("%s: sample tables not usable (%s); demuxing instead", path, exc)
        return None


def matches_packets(container, stream, pts: np.ndarray, keys: np.ndarray, n_check: int = 48) -> bool:
    """Do packets demuxed at the start and from the last keyframe agree with the tables?"""
    got: List[Tuple[int, bool]] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        got.append((packet.pts, bool(packet.is_keyframe)))
        if len(got) >= min(n_check, len(pts)):
            break
    want = [(int(p), bool(k)) for p, k in zip(pts[:len(got)], keys[:len(got)])]
    if got != want or len(got) < min(n_check, len(pts)):
        return False
    last_key = int(np.flatnonzero(keys)[-1])
    container.seek(int(pts[last_key]), stream=stream, backward=True, any_frame=False)
    tail: List[Tuple[int, bool]] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.is_corrupt:
            return False
        tail.append((packet.pts, bool(packet.is_keyframe)))
    if not tail:
        return False
    start = len(pts) - len(tail)
    want_tail = [(int(p), bool(k)) for p, k in zip(pts[start:], keys[start:])]
    return start >= 0 and tail == want_tail
