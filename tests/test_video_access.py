"""Frame-accurate lazy reading of videos: random access == sequential decode,
frame counts, timestamps, ranges, downscale, real clips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _video_factory import decode_all, frame_number, write_vfr_video, write_video
from conftest import realdata_file
from surgseg_core.io import FrameSource, VideoMetadata, open_video

VIDEOS = {
    # name: (writer kwargs, codec name PyAV reports)
    "h264_bframes_long_gop.mp4": (dict(n_frames=60, gop=250, bframes=3), "h264"),
    "h264_gop12_audio_offset.mp4": (dict(n_frames=80, gop=12, bframes=3, audio=True, ts_offset=1.5), "h264"),
    "h264_audio.mov": (dict(n_frames=30, gop=8, audio=True), "h264"),
    "mpeg4_bframes.avi": (dict(n_frames=40, codec="mpeg4", gop=10, bframes=2), "mpeg4"),
    "hevc.mkv": (dict(n_frames=40, codec="libx265", gop=15, bframes=3), "hevc"),
    "vp9_audio.webm": (dict(n_frames=30, codec="libvpx-vp9", gop=10, audio=True), "vp9"),
}
VFR_TIMES = np.cumsum([0.0] + [0.04, 0.04, 0.1, 0.02, 0.3, 0.04, 0.07] * 4)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    paths = {name: write_video(folder / name, **kw) for name, (kw, _) in VIDEOS.items()}
    paths["vfr.mkv"] = write_vfr_video(folder / "vfr.mkv", VFR_TIMES)
    return paths


@pytest.fixture(scope="module")
def reference(videos):
    return {name: decode_all(path) for name, path in videos.items()}


@pytest.mark.parametrize("name", list(VIDEOS) + ["vfr.mkv"])
def test_random_access_equals_sequential(videos, reference, name):
    ref = reference[name]
    with open_video(videos[name]) as src:
        assert src.shape == (len(ref),) + ref[0].shape
        assert [frame_number(f) for f in ref] == list(range(len(ref)))  # the writer and ground truth agree
        order = np.random.default_rng(7).permutation(len(ref))
        for i in order:  # random order: seeks backwards and forwards across GOPs
            np.testing.assert_array_equal(src[int(i)], ref[i], err_msg=f"{name} frame {i}")
        assert [i for i, _ in src.iter_frames()] == list(range(len(ref)))
        for i, frame in src.iter_frames(5, 9):
            np.testing.assert_array_equal(frame, ref[i])
    if name in VIDEOS:
        assert src.metadata.codec == VIDEOS[name][1]


def test_sequential_reads_never_reseek(videos, reference):
    ref = reference["h264_gop12_audio_offset.mp4"]
    with open_video(videos["h264_gop12_audio_offset.mp4"], cache_mb=0) as src:
        src[40]
        seeks = src._reader.seeks
        for i in range(41, 80):
            np.testing.assert_array_equal(src[i], ref[i])
        assert src._reader.seeks == seeks
        src[30]  # going back needs a seek (to the keyframe at 24)...
        assert src._reader.seeks == seeks + 1
        np.testing.assert_array_equal(src[3], ref[3])  # ...but the decoder left at frame 1 just goes on
        assert src._reader.seeks == seeks + 1


def test_metadata_counts_rate_and_offset(videos):
    with open_video(videos["h264_gop12_audio_offset.mp4"]) as src:
        m = src.metadata
        assert isinstance(m, VideoMetadata) and isinstance(src, FrameSource)
        assert (m.n_frames, m.source_n_frames, m.fps, m.format) == (80, 80, 25.0, "video")
        assert (m.width, m.height, m.source_width, m.source_height) == (160, 96, 160, 96)
        assert m.time_offset == pytest.approx(1.5, abs=0.05)
        np.testing.assert_allclose(m.timestamps, np.arange(80) / 25, atol=1e-6)
        assert m.duration == pytest.approx(80 / 25)
        assert not m.variable_frame_rate
        d = json.loads(json.dumps(m.to_dict()))
        assert d["n_frames"] == 80 and len(d["timestamps"]) == 80 and d["source_indices"][-1] == 79


def test_variable_frame_rate_timestamps(videos, reference):
    with open_video(videos["vfr.mkv"]) as src:
        m = src.metadata
        assert m.variable_frame_rate
        assert len(src) == len(VFR_TIMES)
        np.testing.assert_allclose(m.timestamps, VFR_TIMES, atol=1e-3)
        assert m.fps == pytest.approx((len(VFR_TIMES) - 1) / VFR_TIMES[-1], rel=1e-3)
    # a time range uses the real timestamps, not index / fps
    with open_video(videos["vfr.mkv"], start_time=0.5, end_time=1.0) as src:
        expected = np.flatnonzero((VFR_TIMES >= 0.5 - 1e-6) & (VFR_TIMES < 1.0 - 1e-6))
        np.testing.assert_array_equal(src.metadata.source_indices, expected)
        assert [frame_number(f) for f in src[:]] == expected.tolist()


def test_range_stride_and_downscale(videos, reference):
    path = videos["h264_gop12_audio_offset.mp4"]
    with open_video(path, start=10, stop=70, step=7) as src:
        assert len(src) == len(range(10, 70, 7))
        np.testing.assert_array_equal(src.metadata.source_indices, np.arange(10, 70, 7))
        np.testing.assert_allclose(src.metadata.timestamps, np.arange(10, 70, 7) / 25, atol=1e-6)
        assert [frame_number(f) for f in src[:]] == list(range(10, 70, 7))
        np.testing.assert_array_equal(src[1], reference["h264_gop12_audio_offset.mp4"][17])
    # "every 5th frame of seconds 0.4-2.0 at half size"
    with open_video(path, start_time=0.4, end_time=2.0, step=5, downscale=2) as src:
        assert src.shape == (8, 48, 80, 3)
        assert src.metadata.source_indices.tolist() == list(range(10, 50, 5))
        frames = src[:]
        assert [frame_number(f) for f in frames] == list(range(10, 50, 5))
        full = reference["h264_gop12_audio_offset.mp4"][10].astype(float)
        area = full.reshape(48, 2, 80, 2, 3).mean(axis=(1, 3))  # area filter == 2x2 block means
        err_area = np.abs(frames[0].astype(float) - area).mean()
        err_nearest = np.abs(frames[0].astype(float) - full[::2, ::2]).mean()
        assert err_area < 5 and err_area < err_nearest  # (scaled in YUV, so not exactly the RGB means)


def test_real_lapchole_clip():
    path = realdata_file("lapchole_clip_rvimlab/endo.mp4")
    wanted = [249, 0, 121, 119, 120, 3, 230, 228, 227]  # around both GOP boundaries (120, 228)
    ref = decode_all(path, keep=wanted)
    with open_video(path) as src:
        m = src.metadata
        assert (len(src), m.fps, m.width, m.height, m.codec) == (250, 25.0, 1280, 720, "h264")
        assert ref["count"] == 250
        for i in wanted:
            np.testing.assert_array_equal(src[i], ref[i], err_msg=f"frame {i}")


def test_real_endovis_clip_mpeg4():
    path = realdata_file("endovis17_clip_intel/short_source.mp4")
    ref = decode_all(path, keep=range(20))
    with open_video(path) as src:
        m = src.metadata
        assert (len(src), m.fps, m.width, m.height, m.codec) == (20, 10.0, 1920, 1080, "mpeg4")
        for i in [19, 2, 13, 12, 11, 0]:
            np.testing.assert_array_equal(src[i], ref[i], err_msg=f"frame {i}")
    with open_video(path, downscale=4, step=3) as src:
        assert src.shape == (7, 270, 480, 3)


COLOUR_VARIANTS = {  # the 8-bit ones convert through the pooled filter graph, the 10-bit one through reformat
    # full-range JPEG colours (endoscope recorders writing MJPEG)
    "mjpeg_full_range.avi": dict(codec="mjpeg", extra=["-pix_fmt", "yuvj420p", "-q:v", "3"]),
    # BT.709 full range, 4:4:4; 4:2:2
    "h264_422.mkv": dict(extra=["-pix_fmt", "yuv422p"]),
    "h264_444_bt709_full.mkv": dict(extra=["-pix_fmt", "yuv444p", "-colorspace", "bt709", "-color_primaries",
                                           "bt709", "-color_trc", "bt709", "-color_range", "pc"]),
    # 10 bit, BT.709 limited range
    "hevc_10bit_bt709.mkv": dict(codec="libx265", extra=["-pix_fmt", "yuv420p10le", "-colorspace", "bt709"]),
}


@pytest.mark.parametrize("name", list(COLOUR_VARIANTS))
def test_pixels_equal_plain_pyav_for_pixel_formats_and_colour_tags(tmp_path, name):
    """Frames convert to RGB through an FFmpeg filter graph (pooled buffers):
    the pixels must be those of PyAV's own ``to_ndarray("rgb24")``, whatever the
    pixel format, range and colour matrix, sequentially and by random access."""
    import av

    path = write_video(tmp_path / name, n_frames=12, gop=5, **COLOUR_VARIANTS[name])
    with av.open(str(path)) as container:
        pix_fmt = container.streams.video[0].codec_context.pix_fmt
    assert pix_fmt in {"mjpeg_full_range.avi": ["yuvj420p"], "h264_422.mkv": ["yuv422p"], "h264_444_bt709_full.mkv": ["yuv444p", "yuvj444p"],
                       "hevc_10bit_bt709.mkv": ["yuv420p10le"]}[name]  # the variant really has that format
    ref = decode_all(path)
    with open_video(path, cache_mb=0) as src:
        for i, frame in src.iter_frames():
            np.testing.assert_array_equal(frame, ref[i], err_msg=f"frame {i} (sequential)")
        for i in [11, 0, 7, 3]:
            np.testing.assert_array_equal(src[i], ref[i], err_msg=f"frame {i} (random access)")


@pytest.mark.parametrize("name", ["h264_bframes_long_gop.mp4", "h264_gop12_audio_offset.mp4", "h264_audio.mov",
                                  "lapchole"])
def test_mp4_sample_table_index_equals_demux_index(videos, monkeypatch, name):
    from surgseg_core.io import video_pyav

    path = realdata_file("lapchole_clip_rvimlab/endo.mp4") if name == "lapchole" else videos[name]
    monkeypatch.setattr(video_pyav, "SAMPLE_TABLE_MIN_BYTES", 0)  # big-file fast path on small files
    fast = video_pyav.build_index(path)
    monkeypatch.setattr(video_pyav, "_index_from_sample_tables", lambda *args: None)
    demuxed = video_pyav.build_index(path)
    np.testing.assert_array_equal(fast.pts, demuxed.pts)
    np.testing.assert_array_equal(fast.key_pts, demuxed.key_pts)


def test_mp4_sample_tables_are_read_and_checked(videos, tmp_path):
    import av

    from surgseg_core.io.mp4_index import matches_packets, sample_table_index

    path = videos["h264_gop12_audio_offset.mp4"]
    pts, keys, _, scale = sample_table_index(path)
    assert len(pts) == 80 and keys.sum() == 7  # GOP 12 -> keyframes 0, 12, ..., 72
    assert sorted(pts)[0] == round(1.5 * scale)  # the leading empty edit (start offset) is applied
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert matches_packets(container, stream, pts, keys)
        container.seek(0, stream=stream)
        assert not matches_packets(container, stream, pts + 1, keys)  # a misread table is caught
    assert sample_table_index(videos["vfr.mkv"]) is None  # not MP4
