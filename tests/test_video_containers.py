"""Containers without a seek index (MPEG-TS, MPEG-PS: what many surgical
recorders write) and stream-copied cuts that start mid-GOP: every frame reads
the same as a plain sequential decode, in order, shuffled and backwards."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _video_factory import decode_all, ffmpeg_exe, frame_number, write_video
from conftest import realdata_file
from surgseg_core.errors import VideoError
from surgseg_core.io import open_video


def _ffmpeg(*args) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("containers")
    gop = write_video(d / "gop12.mp4", n_frames=80, gop=12, bframes=3, audio=True)
    long_gop = write_video(d / "long_gop.mp4", n_frames=60, gop=250, bframes=3)
    hevc = write_video(d / "hevc.mp4", n_frames=80, codec="libx265", gop=15, bframes=3)
    out = {}
    # stream copies to MPEG-TS (timestamps start at 1.4 s, 90 kHz) and Blu-ray M2TS (192-byte packets)
    _ffmpeg("-i", gop, "-c", "copy", out.setdefault("gop12.ts", d / "gop12.ts"))
    _ffmpeg("-i", long_gop, "-c", "copy", out.setdefault("long_gop.ts", d / "long_gop.ts"))
    _ffmpeg("-i", gop, "-c", "copy", "-f", "mpegts", "-mpegts_m2ts_mode", "1",
            out.setdefault("gop12.m2ts", d / "gop12.m2ts"))
    # a recording joined mid-GOP: the first 100 TS packets are missing
    data = out["gop12.ts"].read_bytes()
    (d / "joined.ts").write_bytes(data[188 * 100:])
    out["joined.ts"] = d / "joined.ts"
    # MPEG-2 in MPEG-PS (.mpg/.vob recorders)
    out["mpeg2.mpg"] = write_video(d / "mpeg2.mpg", n_frames=60, codec="mpeg2video", gop=12,
                                   extra=["-q:v", "4", "-bf", "2"])
    # stream-copied cuts that start mid-GOP (ffmpeg keeps the keyframe before 1.3 s)
    _ffmpeg("-ss", 1.3, "-i", gop, "-c", "copy", out.setdefault("cut.ts", d / "cut.ts"))
    _ffmpeg("-ss", 1.3, "-i", gop, "-c", "copy", out.setdefault("cut.mkv", d / "cut.mkv"))
    # open-GOP HEVC cut: the keyframe's leading pictures reference frames before the cut; in MKV they have no
    # timestamps, in TS timestamps before the keyframe's; decoders drop them either way
    _ffmpeg("-ss", 1.3, "-i", hevc, "-c", "copy", out.setdefault("hevc_cut.mkv", d / "hevc_cut.mkv"))
    _ffmpeg("-ss", 1.3, "-i", hevc, "-c", "copy", out.setdefault("hevc_cut.ts", d / "hevc_cut.ts"))
    return out


NAMES = ["gop12.ts", "long_gop.ts", "gop12.m2ts", "joined.ts", "mpeg2.mpg", "cut.ts", "cut.mkv", "hevc_cut.mkv",
         "hevc_cut.ts"]


@pytest.mark.parametrize("name", NAMES)
def test_every_frame_equals_a_sequential_decode_in_any_order(files, name, caplog):
    caplog.set_level(logging.WARNING, logger="surgseg_core")
    path = files[name]
    ref = decode_all(path)
    numbers = [frame_number(f) for f in ref]
    assert len(ref) >= 40 and numbers == list(range(numbers[0], numbers[0] + len(ref)))  # ground truth is sane
    orders = {"sequential": list(range(len(ref))),
              "shuffled": [int(i) for i in np.random.default_rng(3).permutation(len(ref))],
              "backwards": list(range(len(ref)))[::-1]}
    for how, order in orders.items():
        with open_video(path, cache_mb=0) as src:  # no cache: every read decodes
            assert len(src) == len(ref), (name, how)
            for i in order:
                np.testing.assert_array_equal(src[i], ref[i], err_msg=f"{name} {how} frame {i}")
    with open_video(path, cache_mb=0) as src:
        got = [i for i, frame in src.iter_frames() if np.array_equal(frame, ref[i])]
        assert got == list(range(len(ref)))
        times = src.metadata.timestamps
        assert times[0] == 0 and np.allclose(np.diff(times), 1 / 25, atol=1e-3)
    assert not caplog.records, caplog.text  # intact files: no warning (no "damaged", no "frame 0 read again")


def test_mpeg_ts_seeks_to_keyframes_by_byte_and_reads_on_without_seeking(files):
    # FFmpeg's timestamp seek in MPEG-TS stops at any packet near the target (not the keyframe): byte offsets
    ref = decode_all(files["gop12.ts"])
    with open_video(files["gop12.ts"], cache_mb=0) as src:
        index = src._reader.index
        assert index.key_bytes is not None and len(index.key_bytes) == len(index.key_pts) == 7
        np.testing.assert_array_equal(src[50], ref[50])
        seeks = src._reader.seeks
        for i in range(51, 80):
            np.testing.assert_array_equal(src[i], ref[i])
        assert src._reader.seeks == seeks


def test_a_raw_stream_without_timestamps_says_how_to_remux_and_the_remux_opens(files, tmp_path):
    raw = tmp_path / "rec.h264"
    _ffmpeg("-i", files["gop12.ts"], "-c:v", "copy", "-an", "-bsf:v", "h264_mp4toannexb", "-f", "h264", raw)
    with pytest.raises(VideoError, match=r"rec\.h264: the video packets have no timestamps") as err:
        len(open_video(raw))
    assert "ffmpeg -r 25 -i rec.h264 -c:v libx264 -crf 18 fixed.mp4" in str(err.value)
    _ffmpeg("-r", 25, "-i", raw, "-c:v", "libx264", "-crf", 18, "-preset", "ultrafast", tmp_path / "fixed.mp4")
    ref = decode_all(files["gop12.ts"])  # the advice works (lossy: the frame numbers are compared)
    with open_video(tmp_path / "fixed.mp4") as src:
        assert len(src) == len(ref)
        assert [frame_number(src[i]) for i in (41, 3, 79)] == [frame_number(ref[i]) for i in (41, 3, 79)]


def test_real_lapchole_clip_remuxed_to_mpeg_ts(tmp_path):
    # 720p H.264 with B-frames and AAC, 3 keyframes in 250 frames; as a recorder's .ts it starts at 1.48 s
    ts = tmp_path / "endo.ts"
    _ffmpeg("-i", realdata_file("lapchole_clip_rvimlab/endo.mp4"), "-c", "copy", ts)
    wanted = [249, 3, 120, 0, 131, 130, 200, 1, 248, 60]  # across all three GOPs, backwards and forwards
    ref = decode_all(ts, keep=wanted)
    with open_video(ts, cache_mb=0) as src:
        assert len(src) == ref["count"] == 250
        for i in wanted:
            np.testing.assert_array_equal(src[i], ref[i], err_msg=f"frame {i}")


def test_napari_reader_opens_recorder_formats_and_the_manifest_lists_every_video_suffix(files):
    """The plugin's reader takes what recorders write (.ts, .m2ts, .mpg; any
    case), and the manifest's filename patterns (static YAML) cover the one
    list of video suffixes, so napari offers the reader for each."""
    import yaml

    from napari_surgseg._reader import get_reader
    from surgseg_core.io.open import VIDEO_SUFFIXES

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "src" / "napari_surgseg"
                               / "napari.yaml").read_text())
    patterns = set(manifest["contributions"]["readers"][0]["filename_patterns"])
    for suffix in VIDEO_SUFFIXES:
        assert {f"*{suffix}", f"*{suffix.upper()}"} <= patterns, suffix
    for name in ("gop12.ts", "gop12.m2ts", "mpeg2.mpg"):
        reader = get_reader(str(files[name]))
        assert reader is not None, name
        data, kwargs, kind = reader(str(files[name]))[0]
        assert kind == "image" and len(data) == len(decode_all(files[name])), name
