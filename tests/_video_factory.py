"""Small test videos with known content, written with imageio-ffmpeg's ffmpeg
binary or PyAV's encoder. Other tests may import these helpers.

Every frame carries its frame number as a 12-bit pattern of black/white
blocks in the top rows (robust to lossy codecs), so a test can check it got
*the right* frame, not just *a* frame: ``frame_number(frame) == i``.
"""
from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

BITS = 12


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def pattern_frame(i: int, width: int = 160, height: int = 96) -> np.ndarray:
    """RGB frame showing frame number ``i``: bit blocks on top, moving texture below."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 2 + i * 3) % 256
    frame[..., 1] = (y * 3 + i * 5) % 256
    frame[..., 2] = ((x + y + 7 * i) % 64) * 4
    block = width // BITS
    bar = max(8, height // 6)
    for b in range(BITS):
        frame[:bar, b * block:(b + 1) * block] = 255 if (i >> b) & 1 else 0
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Decode the number written by :func:`pattern_frame` (works after downscale)."""
    height, width = frame.shape[:2]
    block = width / BITS
    bar = max(2, int(height / 6 * 0.6))
    value = 0
    for b in range(BITS):
        x0, x1 = int(b * block + block * 0.25), int((b + 1) * block - block * 0.25)
        if frame[1:bar, x0:x1].mean() > 127:
            value |= 1 << b
    return value


def write_video(
    path: Path,
    n_frames: int = 60,
    *,
    width: int = 160,
    height: int = 96,
    fps: float = 25,
    codec: str = "libx264",
    gop: int = 250,
    bframes: int = 3,
    audio: bool = False,
    ts_offset: Optional[float] = None,
    extra: Sequence[str] = (),
) -> Path:
    """Encode pattern frames with ffmpeg (rawvideo piped in)."""
    path = Path(path)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=22050:duration={n_frames / fps}"]
    cmd += ["-map", "0:v"] + (["-map", "1:a", "-c:a", "aac" if path.suffix != ".webm" else "libopus"]
                              if audio else [])
    cmd += ["-c:v", codec, "-pix_fmt", "yuv420p", "-g", str(gop)]
    if codec == "libx264":
        cmd += ["-preset", "ultrafast", "-bf", str(bframes)]
    elif codec == "libx265":
        cmd += ["-preset", "ultrafast", "-x265-params", f"bframes={bframes}:log-level=error"]
    elif codec == "mpeg4":
        cmd += ["-q:v", "3", "-bf", str(bframes)]
    elif codec == "libvpx-vp9":
        cmd += ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "500k"]
    if ts_offset is not None:
        cmd += ["-output_ts_offset", str(ts_offset)]
    cmd += list(extra) + [str(path)]
    data = b"".join(pattern_frame(i, width, height).tobytes() for i in range(n_frames))
    subprocess.run(cmd, input=data, check=True, capture_output=True)
    return path


def write_vfr_video(path: Path, times_s: Sequence[float], *, width: int = 160, height: int = 96,
                    codec: str = "libx264") -> Path:
    """Variable frame rate video with the given presentation times, via PyAV."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"bf": "2", "g": "12", "preset": "ultrafast"}
        for i, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_packets_video(path: Path, n_frames: int = 24, *, corrupt: Sequence[int] = (),
                        width: int = 160, height: int = 96) -> Path:
    """Intra-only MJPEG in MKV, with the packets of the listed frames replaced by garbage."""
    import av

    path = Path(path)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts = i
            for packet in stream.encode(frame):
                if i in corrupt:
                    garbage = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
                    garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                    garbage.stream = stream
                    garbage.is_keyframe = True
                    packet = garbage
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_empty_video(path: Path) -> Path:
    """A container with a video stream but no frames."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    return path


def decode_all(path: Path, keep: Optional[Sequence[int]] = None):
    """Ground truth: frames decoded sequentially by plain PyAV, RGB.

    Returns a list of all frames, or with ``keep`` a dict {index: frame} of
    just those (long clips would not fit in memory) plus the frame count
    under the key ``"count"``."""
    import av

    with av.open(str(path)) as container:
        frames = container.decode(container.streams.video[0])
        if keep is None:
            return [f.to_ndarray(format="rgb24") for f in frames]
        keep, out, n = set(keep), {}, 0
        for n, f in enumerate(frames, 1):
            if n - 1 in keep:
                out[n - 1] = f.to_ndarray(format="rgb24")
        out["count"] = n
        return out
