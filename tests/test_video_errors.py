"""Every bad input gives a VideoError naming the file and the problem, never a
raw PyAV/tifffile/Pillow traceback."""
from __future__ import annotations

import numpy as np
import pytest

from _video_factory import frame_number, pattern_frame, write_packets_video, write_video
from surgseg_core.errors import VideoError
from surgseg_core.io import open_video
from surgseg_core.io.metadata import format_time


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return {
        "mp4": write_video(folder / "good.mp4", n_frames=50, gop=12),
        "faststart": write_video(folder / "fast.mp4", n_frames=50, gop=12, extra=["-movflags", "+faststart"]),
        "mkv": write_video(folder / "good.mkv", n_frames=50, gop=12),
    }


def _expect(path, match, **kwargs):
    with pytest.raises(VideoError, match=match) as info:
        open_video(path, **kwargs)
    assert str(path.name) in str(info.value)
    return info.value


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.mp4", "not found")


def test_empty_and_not_a_video(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _expect(tmp_path / "empty.mp4", "empty")
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    err = _expect(tmp_path / "notes.mp4", "not a readable video")
    assert err.__cause__ is not None  # chained, so developers still see the library error


def test_mp4_cut_before_its_index_says_so(good, tmp_path):
    data = good["mp4"].read_bytes()  # the moov box (frame index) is written last
    cut = tmp_path / "cut_good.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _expect(cut, "truncated: its frame index .*moov.* is missing")


def _cut(src, folder, fraction):
    data = src.read_bytes()
    cut = folder / f"cut_{src.name}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("kind", ["faststart", "mkv", "faststart-sample-tables"])
def test_truncated_file_opens_up_to_the_damage(good, tmp_path, monkeypatch, kind):
    """A cut-off recording opens as the frames before the cut; the damage is named
    (last good frame and time), and nothing past it reads as a frame."""
    if kind.endswith("sample-tables"):  # the big-file index path must notice the cut too
        from surgseg_core.io import video_pyav

        monkeypatch.setattr(video_pyav, "SAMPLE_TABLE_MIN_BYTES", 0)
        kind = "faststart"
    cut = _cut(good[kind], tmp_path, 0.5)
    with open_video(cut) as src:
        n = len(src)
        assert 5 < n < 50  # B-frames: some frames just before the cut can be gone too
        m = src.metadata
        assert m.damaged_from == n == m.source_n_frames
        assert f"frames 0-{n - 1} are readable" in m.damage
        assert f"after frame {n - 1} ({format_time(m.timestamps[-1])}, the last good frame)" in m.damage
        assert [frame_number(f) for f in src] == list(range(n))  # each frame is the right one
        assert frame_number(src[n - 1]) == n - 1  # random access to the last good frame too
        with pytest.raises(VideoError, match=rf"frame index {n} is out of range.*truncated"):
            src[n]
        with pytest.raises(IndexError):  # still an IndexError for numpy-style code
            src[n + 3]
    # a range inside the readable part opens as usual; one reaching past it names the damage
    with open_video(cut, start=2, stop=n - 1, step=2) as part:
        assert [frame_number(f) for f in part] == list(range(2, n - 1, 2))
        assert part.metadata.damaged_from == n
    _expect(cut, rf"past the last readable frame \({n - 1}\).*truncated", stop=50)
    _expect(cut, "past the last readable frame.*truncated", start=n)
    _expect(cut, "past the end of the readable part.*truncated", start_time=1.99)


@pytest.mark.parametrize("kind", ["faststart", "mkv"])
def test_cut_anywhere_every_frame_opened_is_the_right_one(good, tmp_path, kind):
    """B-frames make the frames missing at a cut lie before frames still present:
    wherever the file is cut, no frame number may point at another frame."""
    seen = set()
    for fraction in np.linspace(0.15, 0.97, 12):
        with open_video(_cut(good[kind], tmp_path, fraction)) as src:
            assert [frame_number(f) for f in src] == list(range(len(src))), fraction
            seen.add(len(src))
    assert len(seen) >= 8


def test_file_cut_before_the_first_frame(good, tmp_path):
    _expect(_cut(good["mkv"], tmp_path, 0.02), "truncated or corrupt|no video frames|no video stream")


def test_zero_frames(tmp_path):
    import subprocess

    from _video_factory import ffmpeg_exe

    path = tmp_path / "zero.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48", "-t", "1",
                    "-c:v", "libx264", "-frames:v", "0", str(path)], check=True, capture_output=True)
    _expect(path, "no video frames|zero frames")


def test_audio_only_file(tmp_path):
    import subprocess

    from _video_factory import ffmpeg_exe

    path = tmp_path / "voice.m4a"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5", str(path)],
                   check=True, capture_output=True)
    _expect(path, "no video stream")


def test_unsupported_codec(good, tmp_path):
    data = good["mkv"].read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path = tmp_path / "strange_codec.mkv"
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/AVC"))  # a codec id nobody decodes
    _expect(path, "unsupported video codec")


def test_unreadable_frame_in_the_middle_names_it(tmp_path):
    path = write_packets_video(tmp_path / "damaged.mkv", n_frames=24, corrupt=[10])
    with open_video(path) as src:
        assert len(src) == 24
        assert frame_number(src[9]) == 9
        with pytest.raises(VideoError, match=r"damaged\.mkv: frame 10 could not be decoded"):
            src[10]
        assert frame_number(src[11]) == 11  # the rest stays readable
        assert frame_number(src[3]) == 3


def _flagged_copies(good, tmp_path, tries: int = 12):
    """Copies of an H.264 file with 64 random bytes written in its middle, and
    the frames FFmpeg flags as corrupt in each (where it flags any)."""
    import av

    data = good.read_bytes()
    for seed in range(tries):
        rng = np.random.default_rng(seed)
        off = int(len(data) * rng.uniform(0.3, 0.8))
        bad = bytearray(data)
        bad[off:off + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        path = tmp_path / f"noisy{seed}.mp4"
        path.write_bytes(bytes(bad))
        try:
            with av.open(str(path)) as c:
                flagged = [i for i, f in enumerate(c.decode(video=0)) if f.is_corrupt]
        except av.error.FFmpegError:
            continue
        if flagged:
            yield path, flagged


def test_random_bytes_inside_an_mp4_give_a_visible_warning_naming_the_damaged_frames(good, tmp_path, caplog):
    """Damaged bytes inside the file: FFmpeg conceals the error and the frames
    of that group of pictures come back as garbage with no exception. They
    are now named in a warning (and by ``damaged_frames``)."""
    import logging

    found = 0
    for path, flagged in _flagged_copies(good["mp4"], tmp_path):
        found += 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="surgseg_core"):
            with open_video(path) as src:
                for _ in src.iter_frames():
                    pass
                damaged = src.damaged_frames()
        assert set(flagged) <= set(damaged), (flagged, damaged)
        assert len(damaged) <= 2 * 12  # whole groups of pictures (gop 12), not the whole video
        assert f"{path.name}: frames {damaged[0]}-" in caplog.text and "may show garbage" in caplog.text
        if found == 2:
            break
    assert found, "no random-byte damage that FFmpeg flags in 12 tries"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start=50), "start=50 is past"),
        (dict(start=-1), "start must be >= 0"),
        (dict(stop=51), "stop=51 is past"),
        (dict(start=10, stop=10), "selects no frames"),
        (dict(step=0), "step must be >= 1"),
        (dict(step=2.5), "step must be a whole number"),
        (dict(downscale=0.5), "downscale must be a number >= 1"),
        (dict(downscale=float("nan")), "downscale"),
        (dict(downscale="2"), "downscale"),
        (dict(start_time=-1.0), "start_time must be"),
        (dict(start_time=1.0, end_time=0.5), "end_time .* must be after"),
        (dict(start_time=30.0), "past the end"),
        (dict(start=3, start_time=1.0), "either in frames"),
        (dict(cache_mb=-1), "cache_mb"),
        (dict(prefetch=-2), "prefetch"),
        (dict(pattern="*.png"), "pattern= only applies"),
    ],
)
def test_bad_options(good, kwargs, match):
    _expect(good["mp4"], match, **kwargs)


def test_frame_folder_problems(tmp_path):
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(empty, "no PNG/JPEG")
    odd = tmp_path / "odd"
    odd.mkdir()
    for i in range(4):
        Image.fromarray(pattern_frame(i)).save(odd / f"frame_{i}.png")
    Image.fromarray(pattern_frame(4, width=120)).save(odd / "frame_4.png")
    with pytest.raises(VideoError, match=r"frame_4\.png: frame 4 is 120x96 but frame_0\.png is 160x96"):
        open_video(odd)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(3):
        Image.fromarray(pattern_frame(i)).save(mixed / f"img_{i}.png")
        Image.fromarray(np.zeros((96, 160), np.uint8)).save(mixed / f"img_{i}_mask.png")
    with pytest.raises(VideoError, match=r"several image series.*pattern="):
        open_video(mixed)
    with pytest.raises(VideoError, match="no image files match"):
        open_video(mixed, pattern="*.jpg")
    (mixed / "img_1.png").write_bytes(b"broken")
    with pytest.raises(VideoError, match=r"img_1\.png: frame 1"):
        open_video(mixed, pattern="img_?.png")


def test_bad_tiffs(tmp_path):
    import tifffile

    (tmp_path / "fake.tif").write_text("not a tiff")
    _expect(tmp_path / "fake.tif", "not a readable TIFF")
    tifffile.imwrite(tmp_path / "neg.tif", np.full((2, 8, 8), -5, np.int16))
    _expect(tmp_path / "neg.tif", "negative values")
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((2, 8, 8), 3.5, np.float32))
    _expect(tmp_path / "hdr.tif", "must lie in 0..1")
    tifffile.imwrite(tmp_path / "fivech.tif", np.zeros((2, 8, 8, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    _expect(tmp_path / "fivech.tif", "channels|axes")


@pytest.mark.realdata
def test_truncated_real_recording_matches_the_intact_one(tmp_path):
    from conftest import realdata_file

    path = realdata_file("lapchole_clip_rvimlab/endo.mp4")
    cut = _cut(path, tmp_path, 0.6)
    with open_video(cut) as part, open_video(path) as full:
        n = len(part)
        assert 100 < n < len(full) and part.metadata.damaged_from == n
        for i in (0, n // 2, n - 2, n - 1):  # the readable part is the recording itself, to the last frame
            np.testing.assert_array_equal(part[i], full[i])


def test_a_one_frame_video_lasts_one_frame_period(tmp_path):
    """It reported 7.8e-05 s (one tick of the time base) as its duration."""
    path = write_video(tmp_path / "one.mp4", 1, fps=25)
    with open_video(path) as video:
        assert len(video) == 1
        assert video.metadata.duration == pytest.approx(1 / 25, rel=0.01)


def test_gaps_in_frame_numbers_warn_but_a_constant_step_does_not(tmp_path):
    import warnings

    from PIL import Image

    def folder(name, numbers):
        d = tmp_path / name
        d.mkdir()
        for n in numbers:
            Image.fromarray(np.full((8, 8, 3), n, np.uint8)).save(d / f"frame_{n:04d}.png")
        return d

    with pytest.warns(UserWarning, match=r"frame numbers have gaps \(missing 3, 4; 2 in all\)"):
        open_video(folder("gaps", [0, 1, 2, 5, 6, 7])).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        open_video(folder("every5", [0, 5, 10, 15])).close()
        open_video(folder("plain", [1, 2, 3, 4])).close()


def test_symlink_loops_and_dangling_links_say_what_they_are(tmp_path):
    (tmp_path / "a.mp4").symlink_to(tmp_path / "b.mp4")
    (tmp_path / "b.mp4").symlink_to(tmp_path / "a.mp4")
    with pytest.raises(VideoError, match="the symbolic link loops"):
        open_video(tmp_path / "a.mp4")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "moved" / "clip.mp4")
    with pytest.raises(VideoError, match=r"points to .*moved/clip.mp4, which does not exist"):
        open_video(tmp_path / "gone.mp4")
