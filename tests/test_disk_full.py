"""A full disk never replaces a good file with a broken one, and says
"disk full" (issue 15). The disk is a small tmpfs, mounted when this process
may (root in a VM or container); skipped with the reason otherwise."""
import os
import subprocess
import uuid

import numpy as np
import pytest

from surgseg_core.errors import WriteError


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _noise(n, seed=0):  # incompressible frames: the MP4 grows with every frame
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 128, 3), dtype=np.uint8)


def test_overlay_export_on_a_full_disk_keeps_the_good_file(small_disk):
    from surgseg_core.io.overlay import export_overlay_video

    target = small_disk / "overlay.mp4"
    export_overlay_video(_noise(3), target, fps=10, crf=0)
    good = target.read_bytes()
    with pytest.raises(WriteError, match="disk is full.*previous file is kept"):
        export_overlay_video(_noise(200, seed=1), target, fps=10, crf=0)
    assert target.read_bytes() == good  # the old complete file, untouched
    # no temporary file left behind (the sidecar is the good file's provenance)
    assert sorted(p.name for p in small_disk.iterdir()) == ["overlay.mp4", "overlay.mp4.provenance.json"]


def test_any_atomic_write_on_a_full_disk_says_so(small_disk):
    from surgseg_core.atomic import atomic_write_bytes

    target = small_disk / "labels.bin"
    atomic_write_bytes(target, b"good")
    with pytest.raises(WriteError, match="disk is full"):
        atomic_write_bytes(target, os.urandom(600 * 1024))
    assert target.read_bytes() == b"good"
    assert [p.name for p in small_disk.iterdir()] == ["labels.bin"]


def test_a_short_encoder_output_is_refused(tmp_path, monkeypatch):
    """The check that catches a killed encoder: fewer frames in the file
    than were sent -> WriteError, and the old file stays."""
    from surgseg_core.io import overlay

    target = tmp_path / "o.mp4"
    overlay.export_overlay_video(_noise(4), target, fps=10)
    good = target.read_bytes()
    real = overlay._verify_mp4
    monkeypatch.setattr(overlay, "_verify_mp4", lambda path, frames: real(path, frames + 1))
    with pytest.raises(WriteError, match="not written completely: 6 of 7 frames"):
        overlay.export_overlay_video(_noise(6), target, fps=10)
    assert target.read_bytes() == good
