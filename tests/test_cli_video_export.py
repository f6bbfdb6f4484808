"""``surgseg video`` and ``surgseg export`` run in-process; bad input gives
exit code 1 and one clear line on stderr."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _video_factory import write_video

from surgseg_core.cli.main import main
from surgseg_core.io.export import read_labels_tiff, read_png_masks, write_labels_tiff, write_points_csv


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("cli") / "clip.mp4", 20, width=64, height=48, fps=10)


def _decode_mp4(path):
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def test_video_info_text_and_json(clip, capsys):
    assert main(["video", "info", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "64x48" in out and "fps:         10" in out and "h264" in out and "20 selected of 20" in out
    assert main(["video", "info", str(clip), "--json", "--step", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fps"] == pytest.approx(10) and info["n_frames"] == 5 and info["source_n_frames"] == 20
    assert info["source_indices"] == [0, 4, 8, 12, 16] and len(info["timestamps"]) == 5


def test_video_info_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["video", "info", str(tmp_path / "missing.mp4")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("surgseg: error:") and "missing.mp4" in err and "\n" not in err
    (tmp_path / "bad.mp4").write_bytes(b"nope" * 100)
    assert main(["video", "info", str(tmp_path / "bad.mp4")]) == 1
    assert "bad.mp4" in capsys.readouterr().err


def test_export_overlay_with_labels_and_points(clip, tmp_path, capsys):
    labels = np.zeros((10, 48, 64), np.uint8)
    labels[:, 20:40, 10:50] = 2
    write_labels_tiff(labels, tmp_path / "lab.tif")
    write_points_csv(np.array([[1, 10.0, 10.0]]), tmp_path / "pts.csv")
    out = tmp_path / "o.mp4"
    code = main(["export", "overlay", str(clip), "--labels", str(tmp_path / "lab.tif"), "--points",
                 str(tmp_path / "pts.csv"), "--step", "2", "--alpha", "1", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.is_file()
    meta, frames = _decode_mp4(out)
    assert frames.shape == (10, 48, 64, 3) and meta["fps"] == pytest.approx(5)  # every 2nd frame, real time
    from surgseg_core.io.export import default_label_color

    np.testing.assert_allclose(frames[:, 25:35, 15:45].reshape(10, -1, 3).mean(1),
                               np.tile(default_label_color(2), (10, 1)), atol=15)  # fmt: skip
    assert frames[1, 8:13, 8:13, :2].mean() > 180  # the yellow point on frame 1


def test_export_overlay_mismatched_labels_fail_clearly(clip, tmp_path, capsys):
    write_labels_tiff(np.zeros((20, 10, 10), np.uint8), tmp_path / "small.tif")
    code = main(["export", "overlay", str(clip), "--labels", str(tmp_path / "small.tif"), "--out",
                 str(tmp_path / "o.mp4")])  # fmt: skip
    assert code == 1
    assert "do not match video frames of size 48x64" in capsys.readouterr().err
    assert main(["export", "overlay", str(clip), "--labels", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o.mp4")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--labels" in err and "not found" in err
    assert not (tmp_path / "o.mp4").exists()


def test_export_labels_converts_tiff_and_png_folders_both_ways(tmp_path, capsys):
    lab = np.random.default_rng(0).integers(0, 9, (3, 16, 20)).astype(np.uint8)
    write_labels_tiff(lab, tmp_path / "a.tif")
    assert main(["export", "labels", str(tmp_path / "a.tif"), "--out", str(tmp_path / "pngs")]) == 0
    np.testing.assert_array_equal(read_png_masks(tmp_path / "pngs"), lab)
    assert main(["export", "labels", str(tmp_path / "pngs"), "--out", str(tmp_path / "b.tiff")]) == 0
    np.testing.assert_array_equal(read_labels_tiff(tmp_path / "b.tiff"), lab)
    capsys.readouterr()
    assert main(["export", "labels", str(tmp_path / "missing"), "--out", str(tmp_path / "c.tif")]) == 1
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["video", "info"], ["export", "overlay"], ["export", "labels"]])
def test_help_has_examples(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "surgseg " + " ".join(argv) in out
