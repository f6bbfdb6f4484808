"""TIFF stacks and frame folders read as (T, H, W, 3) uint8 sources."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from _video_factory import frame_number, pattern_frame
from conftest import realdata_file
from surgseg_core.io import open_video

N = 7


@pytest.fixture(scope="module")
def rgb_stack():
    return np.stack([pattern_frame(i, 64, 48) for i in range(N)])


def test_rgb_tiff_memory_mapped_and_compressed(tmp_path, rgb_stack):
    tifffile.imwrite(tmp_path / "plain.tif", rgb_stack, photometric="rgb")
    tifffile.imwrite(tmp_path / "zlib.tiff", rgb_stack, photometric="rgb", compression="zlib")
    for name in ("plain.tif", "zlib.tiff"):
        with open_video(tmp_path / name) as src:
            assert src.shape == (N, 48, 64, 3) and src.metadata.format == "tiff"
            np.testing.assert_array_equal(src[:], rgb_stack)
            np.testing.assert_array_equal(src[5, 3:9, :, 2], rgb_stack[5, 3:9, :, 2])
            assert [i for i, _ in src.iter_frames()] == list(range(N))
    with open_video(tmp_path / "plain.tif") as src:
        assert isinstance(src._reader.stack._array, np.memmap)  # nothing read up front
    with open_video(tmp_path / "zlib.tiff") as src:
        assert src._reader.stack._pages is not None  # page by page, not the whole stack


def test_grayscale_rgba_and_16bit_tiffs(tmp_path, rgb_stack, caplog):
    gray = rgb_stack[..., 1]
    tifffile.imwrite(tmp_path / "gray.tif", gray, photometric="minisblack")
    with open_video(tmp_path / "gray.tif") as src:
        assert src.shape == (N, 48, 64, 3)
        np.testing.assert_array_equal(src[:], np.repeat(gray[..., None], 3, axis=3))
    rgba = np.concatenate([rgb_stack, np.full(rgb_stack.shape[:3] + (1,), 9, np.uint8)], axis=3)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_video(tmp_path / "rgba.tif") as src:
        np.testing.assert_array_equal(src[:], rgb_stack)  # alpha dropped
    deep = (gray.astype(np.uint16) * 16)  # 12-bit data in a 16-bit container: 0..4080
    deep[0, 0, 0] = 4095
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="minisblack")
    with caplog.at_level(logging.WARNING, logger="surgseg_core"):
        with open_video(tmp_path / "deep.tif") as src:
            out = src[:]
    assert "rescaled to 8 bits" in caplog.text and "0..4095" in caplog.text
    np.testing.assert_array_equal(out[..., 0], np.rint(deep * (255 / 4095)).astype(np.uint8))
    tifffile.imwrite(tmp_path / "float.tif", gray.astype(np.float32) / 255, photometric="minisblack")
    with open_video(tmp_path / "float.tif") as src:
        np.testing.assert_array_equal(src[:, :, :, 0], gray)


def test_tiff_with_leading_axes_fps_and_downscale(tmp_path, rgb_stack):
    # ImageJ hyperstack T=2, Z=3 of RGB frames -> 6 frames, fps from finterval
    data = np.stack([rgb_stack[:3], rgb_stack[3:6]])  # (2, 3, 48, 64, 3)
    tifffile.imwrite(tmp_path / "hyper.tif", data, imagej=True, metadata={"axes": "TZYXS", "finterval": 0.1})
    with open_video(tmp_path / "hyper.tif") as src:
        assert len(src) == 6 and src.metadata.fps == pytest.approx(10)
        np.testing.assert_array_equal(src[:], rgb_stack[:6])
        np.testing.assert_allclose(src.metadata.timestamps, np.arange(6) / 10)
    tifffile.imwrite(tmp_path / "plain.tif", rgb_stack, photometric="rgb")
    with open_video(tmp_path / "plain.tif", downscale=2, start=1, step=3, fps=5) as src:
        assert src.shape == (2, 24, 32, 3)
        area = rgb_stack[[1, 4]].astype(float).reshape(2, 24, 2, 32, 2, 3).mean(axis=(2, 4))
        assert np.abs(src[:].astype(float) - area).max() <= 1  # box (area) filter
        np.testing.assert_allclose(src.metadata.timestamps, [0.2, 0.8])


def test_frame_folder_natural_sort(tmp_path):
    for i in [1, 2, 10, 11, 3]:
        Image.fromarray(pattern_frame(i, 64, 48)).save(tmp_path / f"frame_{i}.png")
    with open_video(tmp_path, fps=25) as src:
        assert src.metadata.format == "frames" and src.metadata.codec == "png"
        assert [frame_number(f) for f in src[:]] == [1, 2, 3, 10, 11]  # frame_2 before frame_10
        np.testing.assert_array_equal(src[3], pattern_frame(10, 64, 48))
        np.testing.assert_allclose(src.metadata.timestamps, np.arange(5) / 25)
    with open_video(tmp_path / "frame_1*.png") as src:  # glob path selects frames
        assert [frame_number(f) for f in src[:]] == [1, 10, 11]
        assert src.metadata.fps is None and np.isnan(src.metadata.timestamps).all()
        assert src.metadata.to_dict()["timestamps"] == [None, None, None]


def test_frame_folder_gray_jpeg(tmp_path):
    for i in range(3):
        Image.fromarray(pattern_frame(i, 64, 48)[..., 0]).save(tmp_path / f"{i:03d}.jpg", quality=95)
    with open_video(tmp_path) as src:
        assert src.shape == (3, 48, 64, 3) and src.metadata.codec == "jpeg"
        frame = src[2]
        assert (frame[..., 0] == frame[..., 2]).all()
        assert frame_number(frame) == 2


def test_real_cholecseg8k_frames():
    folder = realdata_file("cholecseg8k_seq")
    with open_video(folder, pattern="frame_*_endo.png", fps=25) as src:
        assert src.shape == (73, 480, 854, 3)
        files = sorted(folder.glob("frame_*_endo.png"))
        np.testing.assert_array_equal(src[-1], np.asarray(Image.open(folder / "frame_633_endo.png").convert("RGB")))
        np.testing.assert_array_equal(src[0], np.asarray(Image.open(files[0]).convert("RGB")))
        assert src.metadata.duration == pytest.approx(73 / 25)


def test_frame_to_rgb8_in_memory_frames():
    from surgseg_core.errors import VideoError
    from surgseg_core.io.pixels import frame_to_rgb8

    grey12 = np.full((4, 5), 4095, np.uint16)  # 12-bit data in a 16-bit array: full scale, not clipped
    assert frame_to_rgb8(grey12).shape == (4, 5, 3) and (frame_to_rgb8(grey12) == 255).all()
    half = frame_to_rgb8(np.full((2, 2, 4), 0.5, np.float32))  # RGBA float in 0..1
    assert half.shape == (2, 2, 3) and (half == 128).all()
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(frame_to_rgb8(rgb), rgb)
    with pytest.raises(VideoError, match="0..1"):
        frame_to_rgb8(np.full((2, 2), 3.0))


def test_nan_pixels_are_an_error_naming_the_frame_not_a_black_frame(tmp_path, rgb_stack):
    """An all-NaN (or partly NaN / inf) float frame used to come back black;
    sampled frames with NaN refuse at open, others at their read."""
    from surgseg_core.errors import VideoError
    from surgseg_core.io.pixels import frame_to_rgb8

    data = rgb_stack[..., 1].astype(np.float32) / 255
    data[N - 1] = np.nan  # the last frame: open samples it
    tifffile.imwrite(tmp_path / "nan_last.tif", data, photometric="minisblack")
    with pytest.raises(VideoError, match=r"NaN or infinite.*nan_to_num"):
        with open_video(tmp_path / "nan_last.tif") as src:
            src[N - 1]
    good = np.zeros((20, 30), np.float32)
    assert frame_to_rgb8(good).shape == (20, 30, 3)
    good[3, 4] = np.inf
    with pytest.raises(VideoError, match="1 of 600 pixel values are NaN or infinite"):
        frame_to_rgb8(good, "layer frame 3")
