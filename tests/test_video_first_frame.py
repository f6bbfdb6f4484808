"""Time to first frame: ``open_video`` decodes frame 0 before the frame index
exists (the index is built after it, in the background or when first
needed); everything that needs the index waits for it and is exact."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from _video_factory import decode_all, frame_number, write_video
from surgseg_core.errors import VideoError
from surgseg_core.io import open_video

FORMATS = {  # the first frame converts with reformat (not the pooled filter graph): same pixels for each
    "h264_bframes_audio.mp4": dict(n_frames=40, gop=12, bframes=3, audio=True, ts_offset=1.5),
    "mpeg4_bframes.avi": dict(n_frames=20, codec="mpeg4", gop=10, bframes=2),
    "vp9.webm": dict(n_frames=12, codec="libvpx-vp9", gop=10),
    "mjpeg_full_range.avi": dict(n_frames=12, codec="mjpeg", extra=["-pix_fmt", "yuvj420p", "-q:v", "3"]),
    "hevc_10bit.mkv": dict(n_frames=12, codec="libx265", gop=6, extra=["-pix_fmt", "yuv420p10le"]),
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = write_video(tmp_path_factory.mktemp("first") / "clip.mp4", n_frames=60, gop=12, bframes=3, audio=True)
    return path, decode_all(path)


@pytest.fixture(params=["when-needed", "background"])
def gated_index(monkeypatch, request):
    """The index build waits until the test opens the gate; records each build."""
    from surgseg_core.io import open as open_module, video_pyav

    gate, builds = threading.Event(), []
    real = video_pyav.open_indexed

    def gated(path, cancel=None):
        builds.append(threading.current_thread().name)
        assert gate.wait(10), "the gate was never opened"
        return real(path, cancel)

    monkeypatch.setattr(video_pyav, "open_indexed", gated)
    monkeypatch.setattr(open_module, "INDEX_IN_BACKGROUND", request.param == "background")
    return gate, builds


def _first_reader(src):
    return src._reader._readers[0]


def test_first_frame_is_returned_before_the_index_exists(clip, gated_index):
    path, ref = clip
    gate, builds = gated_index
    with open_video(path) as src:
        # the index cannot exist: its build (not started, or started in the background) waits for the gate
        first = src[0]
        np.testing.assert_array_equal(first, ref[0])
        first[:] = 0  # the caller's own array (handed over without a copy): the source is not affected
        np.testing.assert_array_equal(src[0], ref[0])  # converted again from the decoded frame 0...
        np.testing.assert_array_equal(src[0], ref[0])  # ...and cached
        assert 0 in src.cache
        assert src._metadata is None and _first_reader(src)._index is None
        assert "indexing" in repr(src)  # repr does not wait
        gate.set()
        assert len(src) == len(ref) == src.metadata.n_frames == 60  # waits for the index, exact
        assert src.shape == (60,) + ref[0].shape
        assert len(builds) == 1  # built once
        for i in np.random.default_rng(3).permutation(60)[:20].tolist() + [59, 1, 0]:
            np.testing.assert_array_equal(src[i], ref[i], err_msg=f"frame {i}")
        assert [frame_number(f) for f in src[:]] == list(range(60))
        assert _first_reader(src).first_frame_pts == int(_first_reader(src).index.pts[0])


def test_other_threads_wait_for_the_index_without_deadlock(clip, gated_index):
    """napari's slicing thread and the read-ahead thread may ask for frames and
    the frame count while the index is still being built."""
    path, ref = clip
    gate, _ = gated_index
    results, errors = {}, []
    with open_video(path, prefetch=4) as src:
        def ask(name, fn):
            try:
                results[name] = fn()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(name, fn)) for name, fn in
                   [("len", lambda: len(src)), ("frame 37", lambda: src[37]), ("meta", lambda: src.metadata.fps),
                    ("frame 5", lambda: src[5])]]
        for t in threads:
            t.start()
        assert all(t.is_alive() for t in threads)  # all waiting for the index
        gate.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads) and not errors
        assert results["len"] == 60 and results["meta"] == 25.0
        np.testing.assert_array_equal(results["frame 37"], ref[37])
        np.testing.assert_array_equal(results["frame 5"], ref[5])


def test_errors_found_while_indexing_surface_where_the_index_is_needed(clip, monkeypatch):
    from surgseg_core.io import video_pyav

    def broken(path, cancel=None):
        raise VideoError(f"{path}: video packets have no timestamps; cannot index frames")

    monkeypatch.setattr(video_pyav, "open_indexed", broken)
    path, ref = clip
    with open_video(path) as src:  # frame 0 decodes without the index
        np.testing.assert_array_equal(src[0], ref[0])
        for ask in (len, lambda s: s.metadata, lambda s: s[3]):
            with pytest.raises(VideoError, match="clip.mp4: video packets have no timestamps"):
                ask(src)


def test_a_truncated_file_still_warns_and_names_the_damage(tmp_path, caplog):
    path = write_video(tmp_path / "rec.mkv", n_frames=50, gop=12)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="surgseg_core"):
        with open_video(cut) as src:
            n = len(src)
            assert f"frames 0-{n - 1} are readable" in src.metadata.damage
            assert frame_number(src[0]) == 0 and frame_number(src[n - 1]) == n - 1
    assert "cut.mkv: the file is truncated or corrupt" in caplog.text


@pytest.mark.parametrize("name", list(FORMATS))
def test_first_frame_pixels_and_counts_for_each_format(tmp_path, name):
    path = write_video(tmp_path / name, **FORMATS[name])
    ref = decode_all(path)
    with open_video(path) as src:
        assert _first_reader(src).first_frame_pts is not None  # frame 0 came before the index
        np.testing.assert_array_equal(src[0], ref[0])
        assert len(src) == len(ref)
        np.testing.assert_array_equal(src[len(ref) - 1], ref[-1])
        np.testing.assert_array_equal(src[1], ref[1])


def test_ranges_not_starting_at_frame_zero_index_first(clip):
    path, ref = clip
    with open_video(path, start=7, stop=30, step=4) as src:
        assert src._metadata is not None  # the range needed the frame count
        assert [frame_number(f) for f in src] == list(range(7, 30, 4))
    with open_video(path, step=5) as src:  # a stride from frame 0 needs no count for frame 0
        assert _first_reader(src).first_frame_pts is not None
        assert len(src) == 12 and frame_number(src[3]) == 15
    with open_video(path, downscale=2) as lazy, open_video(path, downscale=2, stop=60) as indexed:
        assert _first_reader(lazy).first_frame_pts is not None and indexed._metadata is not None
        np.testing.assert_array_equal(lazy[0], indexed[0])  # the same area filter
        assert lazy.shape == indexed.shape == (60, 48, 80, 3)


def test_the_index_after_close_is_still_built_on_demand(clip):
    path, _ = clip
    src = open_video(path)
    src.close()  # stops a background build
    assert src.metadata.n_frames == 60


def test_a_first_frame_the_index_disowns_is_read_again(clip, monkeypatch, caplog):
    """Safety net: should the first decoded frame not be the index's frame 0
    (a stream whose first decoded frame is not its first shown one), the
    frame shown first is dropped and frame 0 read again with the index."""
    from surgseg_core.io import video_pyav

    real = video_pyav.PyAVReader._first_frame

    def wrong_first(self):
        real(self)
        self.first_frame_pts = 10**9  # a timestamp the index does not have
        return np.zeros((96, 160, 3), np.uint8)

    monkeypatch.setattr(video_pyav.PyAVReader, "_first_frame", wrong_first)
    path, ref = clip
    with caplog.at_level(logging.WARNING, logger="surgseg_core"):
        with open_video(path) as src:
            assert not src[0].any()
            assert len(src) == 60
            assert _first_reader(src)._first_decoded is None  # not converted again either
            np.testing.assert_array_equal(src[0], ref[0])
    assert "was not the video's frame 0" in caplog.text
