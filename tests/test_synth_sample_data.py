"""The committed sample_data/ is exactly what the documented command makes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE_DATA
from surgseg_core.synth.cli import make_sample_data
from surgseg_core.synth.writer import ffmpeg_version

FOLDERS = ("synthetic_clip", "synthetic_liver")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    if not all((SAMPLE_DATA / f / "meta.json").is_file() for f in FOLDERS):
        pytest.fail(f"sample data missing in {SAMPLE_DATA}: run scripts/make_sample_data.sh")
    return make_sample_data(tmp_path_factory.mktemp("sample"))


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "README.md")


def test_same_files(regenerated):
    # the synthetic folders only: sample_data/ also holds bundled weights (sam2_demo/), not made by synth
    for folder in FOLDERS:
        assert _files(regenerated / folder) == _files(SAMPLE_DATA / folder), folder


@pytest.mark.parametrize("folder", FOLDERS)
def test_ground_truth_and_frames_bit_identical(regenerated, folder):
    fresh, committed = regenerated / folder, SAMPLE_DATA / folder
    for rel in _files(committed):
        a, b = fresh / rel, committed / rel
        if rel.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)), err_msg=str(rel))
        elif rel.name == "meta.json":
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            va, vb = ma.pop("video"), mb.pop("video")
            assert ma == mb
            va.pop("ffmpeg_version"), vb.pop("ffmpeg_version")
            assert va == vb
        elif rel.suffix in (".csv", ".json"):
            assert a.read_bytes() == b.read_bytes(), rel


def _decoded(path):
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]


@pytest.mark.parametrize("folder", FOLDERS)
def test_video_same_encoding_with_same_ffmpeg(regenerated, folder):
    """Same ffmpeg build -> the same video. x264 with fixed settings and one
    thread was bit-identical on the machine that made the sample, but another
    CPU (its own assembly paths) can encode the identical frames a little
    differently (seen: the liver clip on an AVX-512 EPYC, same ffmpeg 7.1):
    then the decoded frames must agree within the codec's own error."""
    meta = json.loads((SAMPLE_DATA / folder / "meta.json").read_text())
    if meta["video"]["ffmpeg_version"] != ffmpeg_version():
        pytest.skip(f"sample video made with ffmpeg {meta['video']['ffmpeg_version']}, this is {ffmpeg_version()}")
    fresh, committed = regenerated / folder / "video.mp4", SAMPLE_DATA / folder / "video.mp4"
    if fresh.read_bytes() == committed.read_bytes():
        return
    a, b = _decoded(fresh), _decoded(committed)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        # the encoder's own error against the source frames is ~2.3 grey levels here
        assert np.abs(x - y).mean() < 3.0, f"{folder} frame {i} differs beyond codec noise"


def test_cli_help_lists_examples():
    out = subprocess.run([sys.executable, "-m", "surgseg_core.synth", "clip", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample-data" in out.stdout and "--seed" in out.stdout


def test_cli_reports_bad_input_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "surgseg_core.synth", "clip", str(tmp_path / "c"), "--height", "33", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1 and "even" in out.stderr and "Traceback" not in out.stderr
