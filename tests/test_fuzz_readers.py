"""Fuzzing the readers (issue 15): truncated files and random byte flips of
a small MP4, a TIFF stack, a PNG frame folder and a points CSV. Opening
and reading every frame either works (a damaged MP4 may warn) or raises
one of our errors (``surgseg_core.errors``), never another exception and
never a hang. Examples are derandomised (the same on every run) and
bounded; a new damage found here is fixed in the reader and gets its own
regression test below."""
from __future__ import annotations

import itertools
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from _video_factory import write_video

from surgseg_core.errors import SurgsegError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Longer hunts: SURGSEG_FUZZ_EXAMPLES=500 SURGSEG_FUZZ_RANDOM=1 (new examples every run).
EXAMPLES = int(os.environ.get("SURGSEG_FUZZ_EXAMPLES", "40"))
HANG_S = 60  # one example far past this is a hang, not a slow machine
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("SURGSEG_FUZZ_RANDOM"),
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"reading did not finish within {HANG_S} s")


def damage(data: bytes):
    """Strategy: ``data`` cut short, or with 1-16 bytes replaced, or both."""
    n = len(data)
    cut = st.integers(0, n - 1)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=16)

    def apply(args):
        cut_at, changes = args
        out = bytearray(data)
        for pos, xor in changes or ():
            out[pos] ^= xor
        return bytes(out[:cut_at] if cut_at is not None else out)

    return st.one_of(
        st.tuples(cut, st.none()),
        st.tuples(st.none(), flips),
        st.tuples(cut, flips),
    ).map(apply)


def read_everything(path, **kw):
    """Open ``path`` and decode every frame; our errors are an answer."""
    from surgseg_core.io import open_video

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with open_video(path, cache_mb=0, **kw) as video:
            for i in range(len(video)):
                frame = video[i]
                assert frame.shape[:2] == video.shape[1:3]
            for _ in video.iter_frames():
                pass
    except SurgsegError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import tifffile
    from PIL import Image

    from surgseg_core.io.export import write_points_csv

    root = tmp_path_factory.mktemp("fuzz-seeds")
    mp4 = write_video(root / "clip.mp4", 8, width=48, height=32, fps=10, gop=4).read_bytes()
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (4, 12, 16), dtype=np.uint8)
    tifffile.imwrite(root / "stack.tif", stack)
    buf = root / "f.png"
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buf)
    write_points_csv(np.array([[0, 1.5, 2.0], [3, 4.0, 5.25]]), root / "p.csv",
                     features={"obj_id": [1, 2], "positive": [True, False]})
    return {"mp4": mp4, "tif": (root / "stack.tif").read_bytes(), "png": buf.read_bytes(),
            "csv": (root / "p.csv").read_bytes()}


_cases = itertools.count()


def _case_dir(tmp_path_factory):
    # one folder per example under one base (mktemp per example lists every earlier one:
    # quadratic in long hunts); the previous example's folder is removed
    base = tmp_path_factory.getbasetemp() / "fuzz-cases"
    n = next(_cases)
    shutil.rmtree(base / str(n - 1), ignore_errors=True)
    path = base / str(n)
    path.mkdir(parents=True)
    return path


def test_fuzz_mp4(files, tmp_path_factory):
    @FUZZ
    @given(data=damage(files["mp4"]))
    def check(data):
        path = _case_dir(tmp_path_factory) / "clip.mp4"
        path.write_bytes(data)
        read_everything(path)

    check()


def test_fuzz_tiff_stack(files, tmp_path_factory):
    @FUZZ
    @given(data=damage(files["tif"]))
    def check(data):
        path = _case_dir(tmp_path_factory) / "stack.tif"
        path.write_bytes(data)
        read_everything(path, fps=10)

    check()


def test_fuzz_png_frame_folder(files, tmp_path_factory):
    @FUZZ
    @given(data=damage(files["png"]), which=st.integers(0, 3))
    def check(data, which):
        folder = _case_dir(tmp_path_factory) / "frames"
        folder.mkdir()
        for i in range(4):
            (folder / f"{i:04d}.png").write_bytes(data if i == which else files["png"])
        read_everything(folder)

    check()


def test_fuzz_points_csv(files, tmp_path_factory):
    from surgseg_core.io.points_csv import read_points_csv

    @FUZZ
    @given(data=st.one_of(damage(files["csv"]), st.text(max_size=200).map(str.encode)))
    def check(data):
        path = _case_dir(tmp_path_factory) / "p.csv"
        path.write_bytes(data)
        try:
            table = read_points_csv(path)
        except SurgsegError:
            return
        assert table.data.ndim == 2 and table.data.shape[1] in (2, 3)
        assert np.isfinite(table.data).all()
        for values in table.features.values():
            assert len(values) == len(table.data)

    check()


# ---------------------------------------------------------------- regressions (found by the fuzzers above)
def _seed_tiff(path):
    import tifffile

    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (4, 12, 16), dtype=np.uint8))
    return bytearray(path.read_bytes())


@pytest.mark.parametrize("pos, xor, raised", [(10, 1, "ZeroDivisionError"), (12, 1, "TypeError"),
                                              (108, 8, "OverflowError")])
def test_a_tiff_with_a_damaged_tag_is_a_video_error(tmp_path, pos, xor, raised):
    """One flipped bit in a tag made tifffile's series detection raise
    TypeError, ZeroDivisionError or OverflowError out of open_video."""
    from surgseg_core.errors import VideoError
    from surgseg_core.io import open_video

    data = _seed_tiff(tmp_path / "seed.tif")
    data[pos] ^= xor
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(VideoError, match=rf"bad.tif: not a readable TIFF file\W+{raised}"):
        open_video(tmp_path / "bad.tif", fps=10)


@pytest.mark.parametrize("pos, xor, said", [(11, 1, "frame 2 is not a readable image"),  # ValueError in the header
                                            (35, 2, r"frame 2 cannot be read \(SyntaxError")])  # a broken chunk
def test_a_frame_folder_with_a_damaged_png_is_a_video_error(tmp_path, pos, xor, said):
    """PIL reports a damaged PNG as ValueError ("Truncated IHDR chunk") or
    SyntaxError ("broken PNG file"): both came out of open_video raw."""
    from PIL import Image

    from surgseg_core.errors import VideoError
    from surgseg_core.io import open_video

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    data = bytearray((tmp_path / "s.png").read_bytes())
    good = bytes(data)
    data[pos] ^= xor
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i:04d}.png").write_bytes(bytes(data) if i == 2 else good)
    with pytest.raises(VideoError, match=rf"0002.png: {said}"):
        with open_video(folder) as video:
            video[2]
