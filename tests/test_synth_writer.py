"""Synthetic writers: files round-trip to the in-memory ground truth."""
from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from surgseg_core.errors import Cancelled, ConfigError, DatasetError
from surgseg_core.progress import CancelToken
from surgseg_core.synth import (
    generate_endoscopy_clip,
    generate_liver_scene,
    read_liver_curves,
    read_tool_landmarks,
    write_liver_dataset,
    write_synthetic_clip,
)


def _png(path):
    return np.asarray(Image.open(path))


def test_clip_round_trip(tmp_path):
    calls = []
    out = write_synthetic_clip(tmp_path / "clip", seed=3, n_frames=8, height=64, width=96, fps=12.5,
                               progress=lambda d, t, m="": calls.append((d, t)))  # fmt: skip
    assert calls[-1] == (8, 8) and len(calls) == 8
    clip = generate_endoscopy_clip(seed=3, n_frames=8, height=64, width=96, fps=12.5)
    landmarks = read_tool_landmarks(out / "tool_landmarks.csv")
    for i in range(8):
        fr = clip.frame(i)
        np.testing.assert_array_equal(_png(out / "instruments" / f"{i:06d}.png"), fr.instruments)
        np.testing.assert_array_equal(_png(out / "anatomy" / f"{i:06d}.png"), fr.anatomy)
        assert landmarks.get(i, []) == [
            {k: lm[k] for k in ("instrument_id", "active", "action", "tip", "anchor")} for lm in fr.landmarks
        ]
    assert landmarks, "no landmarks written"
    np.testing.assert_array_equal(_png(out / "fov_mask.png") > 0, clip.fov.mask())
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["n_frames"], meta["height"], meta["width"], meta["fps"]) == (3, 8, 64, 96, 12.5)
    assert meta["anatomy_classes"]["5"] == "OCR" and meta["kind"] == "endoscopy_clip"
    assert meta["command"].startswith("python -m surgseg_core.synth clip OUT_DIR --seed 3")
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(out / "video.mp4"))
    assert n == 8
    reader = imageio_ffmpeg.read_frames(str(out / "video.mp4"))
    info = next(reader)
    assert info["size"] == (96, 64) and abs(info["fps"] - 12.5) < 1e-6
    first = np.frombuffer(next(reader), np.uint8).reshape(64, 96, 3)
    reader.close()
    assert np.abs(first.astype(int) - clip.frame(0).image.astype(int)).mean() < 8  # lossy but the same picture
    assert not list(out.glob(".*tmp*"))  # no temp files left behind


def test_clip_cli_absent_classes(tmp_path):
    """--absent-classes: those anatomy labels never appear, the instruments
    are the same as without it, meta.json and its command record it (and
    only then)."""
    from surgseg_core.synth.cli import main

    args = ["clip", "--seed", "4", "--frames", "3", "--height", "64", "--width", "96", "--quiet"]
    assert main(args[:1] + [str(tmp_path / "rare")] + args[1:] + ["--absent-classes", "3", "5"]) == 0
    assert main(args[:1] + [str(tmp_path / "all")] + args[1:]) == 0
    rare, full = tmp_path / "rare", tmp_path / "all"
    labels = np.stack([_png(rare / "anatomy" / f"{i:06d}.png") for i in range(3)])
    assert not np.isin(labels, [3, 5]).any() and np.isin(labels, [1, 2, 4]).any()
    for i in range(3):
        np.testing.assert_array_equal(_png(rare / "instruments" / f"{i:06d}.png"),
                                      _png(full / "instruments" / f"{i:06d}.png"))
    meta, plain = (json.loads((d / "meta.json").read_text()) for d in (rare, full))
    assert meta["absent_classes"] == [3, 5] and meta["command"].endswith("--absent-classes 3 5")
    assert "absent_classes" not in plain and "absent" not in plain["command"]


def test_liver_round_trip(tmp_path):
    out = write_liver_dataset(tmp_path / "liver", seed=4, n_frames=3, height=64, width=96)
    scene = generate_liver_scene(seed=4, n_frames=3, height=64, width=96)
    curves = read_liver_curves(out / "curves.json")
    assert sorted(curves) == [0, 1, 2]
    for i in range(3):
        fr = scene.frame(i)
        np.testing.assert_array_equal(_png(out / "images" / f"{i:06d}.png"), fr.image)
        np.testing.assert_array_equal(_png(out / "masks" / f"{i:06d}.png"), fr.mask)
        for name, lines in fr.curves.items():
            assert len(curves[i][name]) == len(lines)
            for got, want in zip(curves[i][name], lines):
                np.testing.assert_array_equal(got, want)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["line_width"] == scene.line_width and meta["classes"]["3"] == "ligament"
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "video.mp4"))[0] == 3


def test_rewrite_replaces_and_trims(tmp_path):
    out = tmp_path / "liver"
    write_liver_dataset(out, seed=0, n_frames=4, height=48, width=64)
    write_liver_dataset(out, seed=1, n_frames=2, height=48, width=64)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(read_liver_curves(out / "curves.json")) == [0, 1]


def test_refuses_foreign_folder_and_bad_sizes(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my work")
    with pytest.raises(DatasetError, match="not empty"):
        write_synthetic_clip(foreign, n_frames=2, height=48, width=64)
    assert (foreign / "notes.txt").read_text() == "my work"
    with pytest.raises(ConfigError, match="even"):
        write_synthetic_clip(tmp_path / "odd", n_frames=2, height=49, width=64)
    assert not (tmp_path / "odd").exists()  # rejected before anything was written
    with pytest.raises(ConfigError, match="even"):
        write_liver_dataset(tmp_path / "odd", n_frames=2, height=48, width=63)


def test_cancel_leaves_no_partial_video(tmp_path):
    token = CancelToken()

    def progress(done, total, msg=""):
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        write_synthetic_clip(tmp_path / "c", n_frames=6, height=48, width=64, progress=progress, cancel=token)
    assert not (tmp_path / "c" / "video.mp4").exists()
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]


def test_bad_landmark_file(tmp_path):
    bad = tmp_path / "tool_landmarks.csv"
    bad.write_text("frame,x\n1,2\n")
    with pytest.raises(DatasetError, match="columns"):
        read_tool_landmarks(bad)
    with pytest.raises(DatasetError):
        read_liver_curves(tmp_path / "missing.json")
