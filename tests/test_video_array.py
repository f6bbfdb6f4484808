"""FrameSource behaves like a read-only numpy array: indexing semantics,
__array__ size cap, byte-capped cache, thread safety, prefetch, close."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from _video_factory import decode_all, write_video
from surgseg_core.errors import VideoError
from surgseg_core.io import open_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = write_video(tmp_path_factory.mktemp("arr") / "clip.mp4", n_frames=36, gop=10, bframes=2)
    return path, np.stack(decode_all(path))


KEYS = [
    3, -1, np.int64(5), slice(2, 10, 3), slice(None, None, -2), slice(30, 5, -4), slice(40, 50),
    (5, slice(10, 20), slice(None), 0), (Ellipsis, 1), (slice(0, 4), Ellipsis, slice(0, 2)),
    [4, 1, 4], np.array([[1, 2], [3, 0]]), (slice(1, 3), 7), (2, 7, 9), (2, -1, -1, -1),
    (slice(0, 3), [1, 3]), ([0, 5], [1, 3], [2, 4]), (7, slice(None), None), (slice(None, 4), np.s_[::10], 40),
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_indexing_matches_numpy(clip, key):
    path, ref = clip
    with open_video(path) as src:
        out = src[key]
        expected = ref[key]
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
        if out.size:
            out.flat[0] ^= 1  # results are the caller's own copies...
            np.testing.assert_array_equal(src[key], expected)  # ...the cache is untouched


def test_boolean_mask_and_errors(clip):
    path, ref = clip
    with open_video(path) as src:
        mask = np.zeros(len(src), bool)
        mask[[2, 9, 30]] = True
        np.testing.assert_array_equal(src[mask], ref[mask])
        for bad in (36, -37, [0, 99]):
            with pytest.raises(IndexError):
                src[bad]
        with pytest.raises(IndexError):
            src[0.5]
        with pytest.raises(IndexError):
            src[None, 0]
        with pytest.raises(IndexError):
            src[0, 0, 0, 0, 0]


def test_array_protocol_and_size_cap(clip):
    path, ref = clip
    with open_video(path) as src:
        assert (src.ndim, src.dtype, len(src), src.shape) == (4, np.uint8, 36, ref.shape)
        np.testing.assert_array_equal(np.asarray(src[0:4]), ref[0:4])
        np.testing.assert_array_equal(np.asarray(src), ref)  # small sources convert fine
        src.max_array_bytes = ref[0].nbytes * 10
        with pytest.raises(VideoError, match="clip.mp4.*GiB"):
            np.asarray(src)
        with pytest.raises(VideoError, match="indexing request"):
            src[0:11]
        assert src[0:10].shape[0] == 10


def test_cache_never_exceeds_its_cap(clip):
    path, ref = clip
    frame_bytes = ref[0].nbytes
    cap_mb = 3.5 * frame_bytes / 2**20  # room for 3 frames
    with open_video(path, cache_mb=cap_mb) as src:
        cache = src.cache
        for i in np.random.default_rng(3).integers(0, len(src), 60):
            np.testing.assert_array_equal(src[int(i)], ref[i])
            assert cache.nbytes <= cache.max_bytes
            assert len(cache) <= 3
        src[20]
        hits = cache.hits
        src[20]
        assert cache.hits == hits + 1
    with open_video(path, cache_mb=0) as src:  # caching off still reads correctly
        np.testing.assert_array_equal(src[7], ref[7])
        assert len(src.cache) == 0


def test_concurrent_readers_get_right_frames(clip):
    path, ref = clip
    errors = []
    with open_video(path, cache_mb=1) as src:
        def worker(seed):
            rng = np.random.default_rng(seed)
            try:
                for i in rng.integers(0, len(src), 25):
                    if not np.array_equal(src[int(i)], ref[i]):
                        errors.append(f"frame {i} wrong")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for i, frame in src.iter_frames():  # a sequential pass at the same time
            if not np.array_equal(frame, ref[i]):
                errors.append(f"iter frame {i} wrong")
        for t in threads:
            t.join()
    assert errors == []


def test_prefetch_fills_the_next_frames(clip):
    path, ref = clip
    with open_video(path, prefetch=4) as src:
        src[10]
        deadline = time.monotonic() + 20
        while not all(j in src.cache for j in range(11, 15)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(j in src.cache for j in range(11, 15))
        hits = src.cache.hits
        for j in range(11, 15):
            np.testing.assert_array_equal(src[j], ref[j])
        assert src.cache.hits >= hits + 4


def test_close_and_context_manager(clip):
    path, _ = clip
    with open_video(path) as src:
        src[1]
    assert src.closed
    with pytest.raises(VideoError, match="closed"):
        src[2]
    src.close()  # idempotent


def test_prefetch_reads_behind_when_playing_backwards(clip):
    """Stepping backwards (napari playing in reverse) reads the frames before
    the current one, within the cache's cap."""
    path, ref = clip
    with open_video(path, prefetch=4) as src:
        src[30]
        src[25]  # a step back: direction of play is backwards
        deadline = time.monotonic() + 20
        while not all(j in src.cache for j in range(21, 25)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(j in src.cache for j in range(21, 25))
        for j in range(24, 20, -1):
            np.testing.assert_array_equal(src[j], ref[j])
    frame_mb = ref[0].nbytes / 2**20
    with open_video(path, prefetch=8, cache_mb=3.5 * frame_mb) as src:  # room for 3 frames
        src[5]
        time.sleep(0.5)
        # at most half the cap is read ahead: the frame shown stays cached
        assert 5 in src.cache and not any(j in src.cache for j in range(7, 14))
