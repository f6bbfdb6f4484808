"""The shared frame-window reader (surgseg_core.io.window): frames t-k..t+k,
edges padded by repetition, read from a real video without loading it all."""
from __future__ import annotations

import numpy as np
import pytest

from _video_factory import frame_number, write_video
from surgseg_core.errors import FrameIndexError, VideoError
from surgseg_core.io import frame_window, iter_windows, open_video, window_indices


class CountingFrames:
    """Array-like of numbered frames that counts every read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads: list = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        self.reads.append(int(i))
        return np.full((4, 5, 3), i, np.uint8)


def test_indices_repeat_the_edge_frames():
    assert window_indices(0, 2, 10).tolist() == [0, 0, 0, 1, 2]
    assert window_indices(1, 2, 10).tolist() == [0, 0, 1, 2, 3]
    assert window_indices(5, 2, 10).tolist() == [3, 4, 5, 6, 7]
    assert window_indices(9, 2, 10).tolist() == [7, 8, 9, 9, 9]
    assert window_indices(0, 3, 1).tolist() == [0] * 7  # a one-frame video
    assert window_indices(4, 0, 10).tolist() == [4]


def test_bad_arguments_raise_clear_errors():
    src = CountingFrames(5)
    with pytest.raises(FrameIndexError, match="outside 0..4"):
        frame_window(src, 5, 1)
    with pytest.raises(FrameIndexError):
        frame_window(src, -1, 1)
    with pytest.raises(VideoError, match="k .*>= 0"):
        frame_window(src, 2, -1)
    with pytest.raises(VideoError, match="whole number"):
        window_indices(2, 1.5, 5)
    with pytest.raises(FrameIndexError, match="outside"):
        list(iter_windows(src, 1, 2, 9))
    with pytest.raises(VideoError, match="no frames"):
        frame_window(CountingFrames(0), 0, 1)


def test_window_reads_each_distinct_frame_once():
    src = CountingFrames(10)
    win = frame_window(src, 0, 2)
    assert win.shape == (5, 4, 5, 3)
    assert win[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert sorted(src.reads) == [0, 1, 2]


def test_sliding_windows_equal_single_windows_and_read_each_frame_once():
    src = CountingFrames(9)
    got = list(iter_windows(src, 2))
    assert [t for t, _ in got] == list(range(9))
    for t, win in got:
        np.testing.assert_array_equal(win, frame_window(CountingFrames(9), t, 2))
    assert src.reads == list(range(9))  # sequential, no frame twice
    # a sub-range reads only the frames its windows need
    src = CountingFrames(20)
    got = list(iter_windows(src, 1, 5, 8))
    assert [t for t, _ in got] == [5, 6, 7]
    assert src.reads == list(range(4, 9))
    assert list(iter_windows(src, 1, 3, 3)) == []


def test_windows_from_a_real_video(tmp_path):
    path = write_video(tmp_path / "v.mp4", 12, width=192, height=96, gop=5)
    with open_video(path, cache_mb=0) as src:
        win = frame_window(src, 11, 2)
        assert [frame_number(f) for f in win] == [9, 10, 11, 11, 11]
        numbers = {t: [frame_number(f) for f in w] for t, w in iter_windows(src, 1)}
    assert numbers[0] == [0, 0, 1]
    assert numbers[6] == [5, 6, 7]
    assert numbers[11] == [10, 11, 11]
    assert len(numbers) == 12
