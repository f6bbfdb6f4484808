"""Label/points exports round-trip exactly; overlay MP4s have the right frames,
size and colours where labels and points are."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from surgseg_core.errors import Cancelled, DatasetError, VideoError
from surgseg_core.io.export import (
    LabelsTiffStack,
    PngMaskStack,
    default_label_color,
    export_overlay_video,
    open_labels,
    read_labels_tiff,
    read_png_masks,
    read_points_csv,
    write_labels_tiff,
    write_png_masks,
    write_points_csv,
)
from surgseg_core.progress import CancelToken


def _labels(t=4, h=30, w=42, top=5, dtype=np.int32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, top, (t, h, w)).astype(dtype)


def _decode_mp4(path):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return meta, np.stack(frames)


# ---------------------------------------------------------------- labels TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_labels_tiff_round_trip_keeps_shape_dtype_and_values(tmp_path, dtype):
    lab = _labels(dtype=dtype, top=300 if np.dtype(dtype).itemsize > 1 else 200)
    out = write_labels_tiff(lab, tmp_path / "masks.tif")
    back = read_labels_tiff(out)
    assert back.dtype == lab.dtype and back.shape == lab.shape
    np.testing.assert_array_equal(back, lab)
    with tifffile.TiffFile(out) as tif:  # one compressed page per frame
        assert len(tif.pages) == lab.shape[0]
        assert all(p.compression == tifffile.COMPRESSION.ADOBE_DEFLATE for p in tif.pages)


def test_labels_tiff_2d_is_one_page_and_single_frame_keeps_its_t_axis(tmp_path):
    lab = _labels()
    write_labels_tiff(lab[1], tmp_path / "one.tiff")
    write_labels_tiff(lab[:1], tmp_path / "t1.tif")
    with tifffile.TiffFile(tmp_path / "one.tiff") as tif:
        assert len(tif.pages) == 1
    assert read_labels_tiff(tmp_path / "one.tiff").shape == lab.shape[1:]
    assert read_labels_tiff(tmp_path / "t1.tif").shape == (1,) + lab.shape[1:]
    np.testing.assert_array_equal(read_labels_tiff(tmp_path / "one.tiff"), lab[1])


def test_labels_tiff_lazy_stack_reads_single_pages(tmp_path):
    lab = _labels(t=6)
    write_labels_tiff(lab, tmp_path / "m.tif")
    with LabelsTiffStack(tmp_path / "m.tif") as stack:
        assert stack.shape == lab.shape and stack.dtype == lab.dtype
        np.testing.assert_array_equal(stack[3], lab[3])
        np.testing.assert_array_equal(stack[-1, 2:5], lab[-1, 2:5])
        np.testing.assert_array_equal(stack[1:5:2], lab[1:5:2])


def test_labels_writers_refuse_wrong_dimensions_and_types(tmp_path):
    with pytest.raises(DatasetError, match=r"\(T, H, W\).*shape \(2, 3, 4, 5\)"):
        write_labels_tiff(np.zeros((2, 3, 4, 5), np.uint8), tmp_path / "x.tif")
    with pytest.raises(DatasetError, match="integers"):
        write_labels_tiff(np.zeros((2, 3, 4), np.float32), tmp_path / "x.tif")
    with pytest.raises(DatasetError, match=r"\.tif or \.tiff"):
        write_labels_tiff(np.zeros((2, 3, 4), np.uint8), tmp_path / "x.png")
    with pytest.raises(DatasetError, match="shape"):
        write_png_masks(np.zeros((5,), np.uint8), tmp_path / "pngs")
    assert not (tmp_path / "x.tif").exists()


def test_cancelled_tiff_write_leaves_the_previous_file_untouched(tmp_path):
    target = tmp_path / "m.tif"
    old = _labels(seed=1)
    write_labels_tiff(old, target)
    token = CancelToken()

    def progress(done, total, msg=""):
        token.cancel()  # cancel after the first page

    with pytest.raises(Cancelled):
        write_labels_tiff(_labels(seed=2), target, progress=progress, cancel=token)
    np.testing.assert_array_equal(read_labels_tiff(target), old)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]  # no temp file left


def test_exports_get_normal_file_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    write_labels_tiff(_labels(), tmp_path / "m.tif")
    write_png_masks(_labels(), tmp_path / "pngs")
    write_points_csv(np.zeros((1, 3)), tmp_path / "p.csv")
    for path, base in ((tmp_path / "m.tif", 0o666), (tmp_path / "p.csv", 0o666), (tmp_path / "pngs", 0o777)):
        assert stat.S_IMODE(path.stat().st_mode) == base & ~mask, path  # not mkstemp's private 0600


# ---------------------------------------------------------------- PNG masks


def test_png_masks_round_trip_uint8_and_uint16(tmp_path):
    small = _labels(top=256)
    write_png_masks(small, tmp_path / "small")
    names = sorted(p.name for p in (tmp_path / "small").iterdir())
    assert names == [f"{i:06d}.png" for i in range(len(small))]
    back = read_png_masks(tmp_path / "small")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, small)

    big = _labels(top=2)
    big[0, 0, 0] = 1000  # one id above 255 switches the whole stack to uint16
    write_png_masks(big, tmp_path / "big")
    back = read_png_masks(tmp_path / "big")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, big)


def test_png_masks_2d_and_overwrite_of_previous_export(tmp_path):
    lab = _labels()
    write_png_masks(lab, tmp_path / "m")
    write_png_masks(lab[2], tmp_path / "m")  # replaces the earlier export
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["000000.png"]
    np.testing.assert_array_equal(read_png_masks(tmp_path / "m")[0], lab[2])


def test_png_masks_refuse_values_png_cannot_hold_and_foreign_folders(tmp_path):
    with pytest.raises(DatasetError, match="negative"):
        write_png_masks(np.full((1, 2, 2), -1, np.int32), tmp_path / "neg")
    with pytest.raises(DatasetError, match="65535"):
        write_png_masks(np.full((1, 2, 2), 70000, np.int32), tmp_path / "huge")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="other files"):
        write_png_masks(_labels(), user)
    assert (user / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "neg").exists() and not (tmp_path / "huge").exists()


def test_png_mask_reader_accepts_grey_rgb_masks_and_rejects_colour(tmp_path):
    from PIL import Image

    folder = tmp_path / "rgbmasks"
    folder.mkdir()
    ids = np.array([[0, 31], [21, 50]], np.uint8)
    Image.fromarray(np.repeat(ids[..., None], 3, axis=2)).save(folder / "frame_7_mask.png")
    np.testing.assert_array_equal(read_png_masks(folder)[0], ids)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(folder / "frame_8_mask.png")
    with pytest.raises(DatasetError, match="frame_8_mask.png.*not a label mask"):
        read_png_masks(folder)


def test_open_labels_dispatches_and_reports_missing(tmp_path):
    lab = _labels()
    write_labels_tiff(lab, tmp_path / "a.tif")
    write_png_masks(lab, tmp_path / "b")
    assert isinstance(open_labels(tmp_path / "a.tif"), LabelsTiffStack)
    assert isinstance(open_labels(tmp_path / "b"), PngMaskStack)
    np.testing.assert_array_equal(open_labels(tmp_path / "b")[2], lab[2])
    with pytest.raises(DatasetError, match="not found"):
        open_labels(tmp_path / "missing.tif")
    with pytest.raises(DatasetError, match="no numbered PNG"):
        open_labels(tmp_path)  # a folder without masks


# ---------------------------------------------------------------- points CSV


def test_points_csv_round_trip_with_features_and_documented_columns(tmp_path):
    pts = np.array([[0, 1.5, 2.25], [3, 10.0, 20.125], [3, 7.0, 0.1]])  # napari order (t, y, x)
    feats = {"label": np.array([1, 2, 1]), "kind": ["tip", "anchor", "tip"], "score": [0.5, 0.25, 1e-7]}
    out = write_points_csv(pts, tmp_path / "p.csv", features=feats)
    lines = out.read_text().splitlines()
    assert lines[0] == "frame,x,y,label,kind,score"
    assert lines[1].split(",")[:3] == ["0", "2.25", "1.5"]  # frame, x (column), y (row)
    table = read_points_csv(out)
    np.testing.assert_array_equal(table.data, pts)
    np.testing.assert_array_equal(table.features["label"], feats["label"])
    assert list(table.features["kind"]) == feats["kind"]
    np.testing.assert_array_equal(table.features["score"], feats["score"])


def test_points_csv_2d_points_and_column_order_by_header(tmp_path):
    pts2 = np.array([[4.0, 5.0], [6.5, 7.5]])
    write_points_csv(pts2, tmp_path / "p2.csv")
    assert (tmp_path / "p2.csv").read_text().splitlines()[0] == "x,y"
    np.testing.assert_array_equal(read_points_csv(tmp_path / "p2.csv").data, pts2)
    # Files from elsewhere: columns are found by name, not position.
    (tmp_path / "other.csv").write_text("y,label,x,t\n1,a,2,3\n")
    table = read_points_csv(tmp_path / "other.csv")
    np.testing.assert_array_equal(table.data, [[3, 1, 2]])
    assert list(table.features["label"]) == ["a"]


def test_points_csv_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match=r"\(N, 3\)"):
        write_points_csv(np.zeros((3, 4)), tmp_path / "p.csv")
    with pytest.raises(DatasetError, match="3 values for 2 points"):
        write_points_csv(np.zeros((2, 3)), tmp_path / "p.csv", features={"label": [1, 2, 3]})
    with pytest.raises(DatasetError, match="whole numbers"):
        write_points_csv(np.array([[0.5, 1, 1]]), tmp_path / "p.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="lacks 'x' and 'y'"):
        read_points_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("frame,x,y\n0,one,2\n")
    with pytest.raises(DatasetError, match="column 'x' must be numeric"):
        read_points_csv(tmp_path / "bad2.csv")
    with pytest.raises(DatasetError, match="not found"):
        read_points_csv(tmp_path / "nope.csv")
    assert not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------- overlay video


def _video(t=5, h=40, w=56, seed=3):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 120, (1, h, w, 3)).astype(np.uint8)  # dull, flat-ish background
    return np.repeat(base, t, axis=0)


def test_overlay_has_frame_count_size_and_label_colours(tmp_path):
    video = _video()
    labels = np.zeros(video.shape[:3], np.int32)
    labels[:, 5:25, 5:25] = 1
    labels[2, 25:38, 30:50] = 2  # only in frame 2
    colors = {1: (255, 0, 0), 2: (0, 0, 255)}
    out = export_overlay_video(video, tmp_path / "o.mp4", labels=labels, colors=colors, alpha=0.6, fps=10)
    meta, frames = _decode_mp4(out)
    assert frames.shape == video.shape and meta["fps"] == 10
    inside = frames[:, 9:21, 9:21].reshape(len(frames), -1, 3).mean(1)
    expected = 0.4 * video[:, 9:21, 9:21].reshape(len(frames), -1, 3).mean(1) + 0.6 * np.array([255, 0, 0])
    np.testing.assert_allclose(inside, expected, atol=12)  # H.264 is lossy
    outside = frames[:, 30:38, 2:10].astype(float)
    np.testing.assert_allclose(outside.mean((1, 2)), video[:, 30:38, 2:10].mean((1, 2)), atol=8)
    blue = frames[:, 28:35, 34:46, 2].mean((1, 2)) - frames[:, 28:35, 34:46, 0].mean((1, 2))
    assert blue[2] > 60 and np.all(np.abs(np.delete(blue, 2)) < 30)


def test_overlay_pads_odd_sizes_draws_points_and_reads_label_files(tmp_path):
    video = _video(t=4, h=41, w=57)
    labels = np.zeros(video.shape[:3], np.uint8)
    labels[1, 10:30, 10:30] = 3
    write_labels_tiff(labels, tmp_path / "lab.tif")
    write_points_csv(np.array([[3, 20.0, 45.0]]), tmp_path / "pts.csv")
    out = export_overlay_video(
        video, tmp_path / "o.mp4", labels=tmp_path / "lab.tif", points=tmp_path / "pts.csv",
        point_radius=4, point_color=(0, 255, 0), alpha=1.0,
    )
    meta, frames = _decode_mp4(out)
    assert frames.shape == (4, 42, 58, 3)  # padded by one row and one column
    np.testing.assert_allclose(frames[1, 15:25, 15:25].reshape(-1, 3).mean(0), default_label_color(3), atol=15)
    green = frames[:, 18:23, 43:48].reshape(4, -1, 3).mean(1)
    assert green[3, 1] > 200 and green[3, 0] < 60  # the point, on frame 3 only
    assert np.all(green[:3, 1] < 150)


def test_overlay_streams_from_a_lazy_source_and_uses_its_fps_and_stride(tmp_path):
    from surgseg_core.io import open_video

    video = _video(t=8)
    import imageio_ffmpeg

    src_path = tmp_path / "src.mp4"
    writer = imageio_ffmpeg.write_frames(str(src_path), (56, 40), fps=20, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for f in video:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    with open_video(src_path, step=2) as src:
        out = export_overlay_video(src, tmp_path / "o.mp4")
    meta, frames = _decode_mp4(out)
    assert len(frames) == 4 and meta["fps"] == 10  # 20 fps, every 2nd frame -> real time kept


def test_overlay_refuses_to_overwrite_its_source(tmp_path):
    from surgseg_core.io import open_video

    from _video_factory import write_video

    src_path = write_video(tmp_path / "clip.mp4", 3, width=32, height=32)
    before = src_path.read_bytes()
    with open_video(src_path) as src:
        with pytest.raises(VideoError, match="overwrite its own source"):
            export_overlay_video(src, src_path)
    assert src_path.read_bytes() == before


def test_overlay_errors_and_cancel_leave_nothing(tmp_path):
    video = _video()
    with pytest.raises(DatasetError, match="3 frames but the video has 5"):
        export_overlay_video(video, tmp_path / "o.mp4", labels=np.zeros((3, 40, 56), np.uint8))
    with pytest.raises(DatasetError, match="do not match"):
        export_overlay_video(video, tmp_path / "o.mp4", labels=np.zeros((5, 40, 50), np.uint8))
    with pytest.raises(VideoError, match=r"\.mp4"):
        export_overlay_video(video, tmp_path / "o.avi")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        export_overlay_video(video, tmp_path / "o.mp4", cancel=token)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, message", [
    (np.full((3, 16, 16), np.nan, np.float32), "labels must be integer ids .* got float32"),
    (np.full((3, 16, 16), -2, np.int16), "negative values"),
])
def test_overlay_refuses_float_or_negative_labels(tmp_path, labels, message):
    """Float (NaN) or negative labels used to paint nothing, silently."""
    from surgseg_core.errors import DatasetError
    from surgseg_core.io.overlay import export_overlay_video

    video = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(DatasetError, match=message):
        export_overlay_video(video, tmp_path / "o.mp4", labels=labels, fps=10)
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("rows, message", [
    ("0,nan,3\n", "line 2 has a NaN or infinite coordinate"),
    ("0,1,2\n1,inf,2\n", "line 3 has a NaN or infinite coordinate"),
    ("0.5,1,2\n", "must hold frame numbers"),
    ("-1,1,2\n", "must hold frame numbers"),
])
def test_points_csv_refuses_non_finite_points_and_bad_frames(tmp_path, rows, message):
    from surgseg_core.errors import DatasetError
    from surgseg_core.io.points_csv import read_points_csv

    path = tmp_path / "p.csv"
    path.write_text("frame,x,y\n" + rows)
    with pytest.raises(DatasetError, match=message):
        read_points_csv(path)


def _frame_times(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(f.pts for f in container.decode(stream))
        return (np.asarray(pts) - pts[0]) * float(stream.time_base)


def test_overlay_of_a_variable_frame_rate_video_keeps_its_frame_times(tmp_path, capsys):
    """A VFR source's overlay was written at one constant rate (silently
    retimed): each frame now keeps its source time."""
    import warnings

    from _video_factory import write_vfr_video
    from surgseg_core.cli.main import main
    from surgseg_core.io import open_video

    times = np.cumsum([0.0, 0.04, 0.04, 0.1, 0.02, 0.3, 0.04, 0.07, 0.5, 0.04])
    src = write_vfr_video(tmp_path / "vfr.mp4", times, width=64, height=48)
    with open_video(src) as video:
        assert video.metadata.variable_frame_rate
        np.testing.assert_allclose(video.metadata.timestamps, times, atol=1e-3)
    labels = np.zeros((len(times), 48, 64), np.uint8)
    labels[:, 10:20, 10:30] = 1
    out = tmp_path / "overlay.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default keeps the timing: nothing to warn about
        assert export_overlay_video(src, out, labels=labels) == out
    np.testing.assert_allclose(_frame_times(out), times, atol=1e-3)
    with open_video(out) as video:
        assert len(video) == len(times) and video.metadata.variable_frame_rate
        np.testing.assert_allclose(video.metadata.timestamps, times, atol=1e-3)

    # the CLI path: same timing; a stride keeps the chosen frames' own times
    assert main(["export", "overlay", str(src), "--out", str(tmp_path / "cli.mp4"), "--step", "2"]) == 0
    np.testing.assert_allclose(_frame_times(tmp_path / "cli.mp4"), times[::2], atol=1e-3)

    # a constant rate asked for explicitly: done, with a warning saying how far the times move
    with pytest.warns(UserWarning, match=r"variable frame rate; with fps=10 .* differ from the source's by up to"):
        export_overlay_video(src, tmp_path / "cfr.mp4", fps=10)
    np.testing.assert_allclose(_frame_times(tmp_path / "cfr.mp4"), np.arange(len(times)) / 10, atol=1e-3)


def test_overlay_of_a_constant_rate_video_keeps_its_rate(tmp_path):
    from _video_factory import write_video

    src = write_video(tmp_path / "cfr.mp4", 6, width=64, height=48, fps=12)
    out = export_overlay_video(src, tmp_path / "o.mp4")
    np.testing.assert_allclose(_frame_times(out), np.arange(6) / 12, atol=1e-3)
