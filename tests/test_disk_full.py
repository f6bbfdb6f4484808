"""A full disk never replaces a good file with a broken one, and says
"disk full" (issue 15). The disk is a small tmpfs, mounted when this process
may (root in a VM or container); skipped with the reason otherwise."""
import os

import numpy as np
import pytest

from _tmpfs import mounted_tmpfs

from surgseg_core.errors import WriteError


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path, "size=400k", "a small tmpfs") as mnt:
        yield mnt


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


# ----------------------------------------------------------------- commands
# Each command on a disk that fills up at the moment it writes: one line
# saying the disk is full, a non-zero exit, and no good file replaced.


def _fill(disk):
    """Take every free byte of the small disk; returns the filler to delete."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def _temps(folder):
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def _one_line(capsys, *words):
    err = capsys.readouterr().err  # (progress bars may precede it)
    errors = [line for line in err.splitlines() if line.startswith("surgseg:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    for w in words:
        assert w in errors[0], err
    return errors[0]


def test_train_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(small_disk, monkeypatch, capsys):
    import _toy_method  # noqa: F401  (registers "toy")
    from surgseg_core.cli.main import main
    from surgseg_core.training import trainer
    from surgseg_core.training.checkpoint import load_checkpoint

    run = small_disk / "run"
    assert main(["train", "toy", "--run-dir", str(run), "--set", "epochs=1", "--device", "cpu"]) == 0
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()

    real, filled = trainer.save_checkpoint, []

    def fill_then_save(path, ckpt):  # the disk fills up just as the next checkpoint is written
        filled.append(_fill(small_disk))
        return real(path, ckpt)

    monkeypatch.setattr(trainer, "save_checkpoint", fill_then_save)
    capsys.readouterr()
    assert main(["train", "toy", "--run-dir", str(run), "--resume", "--set", "epochs=2"]) == 1
    _one_line(capsys, "disk is full", "free space", f"the last good checkpoint is kept: {last}", "--resume")
    assert last.read_bytes() == good and not _temps(run)

    monkeypatch.setattr(trainer, "save_checkpoint", real)
    filled[0].unlink()
    assert main(["train", "toy", "--run-dir", str(run), "--resume", "--set", "epochs=2"]) == 0
    assert load_checkpoint(last)["epoch"] == 2


def test_track_on_a_full_disk_says_so_and_leaves_complete_masks(small_disk, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from _video_factory import write_video
    from surgseg_core.cli.main import main
    from surgseg_core.sam2_engine import outputs

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    clip = write_video(tmp_path / "clip.mp4", 5, width=64, height=48, fps=10)
    real, count = outputs._write_png, [0]

    def fill_at_third(path, labels, image):
        count[0] += 1
        if count[0] == 3:
            _fill(small_disk)
        return real(path, labels, image)

    monkeypatch.setattr(outputs, "_write_png", fill_at_third)
    out = small_disk / "masks"
    assert main(["track", str(clip), "--box", "0", "8", "8", "40", "30", "--out", str(out)]) == 1
    _one_line(capsys, "disk is full", "000002.png")
    pngs = sorted(p.name for p in out.glob("[0-9]*.png"))
    assert pngs == ["000000.png", "000001.png"] and not _temps(out)
    for name in pngs:  # what is there is whole
        with Image.open(out / name) as im:
            im.load()


@pytest.mark.parametrize("target", ["labels.tif", "pngs"])
def test_export_labels_on_a_full_disk_keeps_the_previous_export(small_disk, tmp_path, target, capsys):
    from surgseg_core.cli.main import main
    from surgseg_core.io.export import write_labels_tiff

    src = tmp_path / "src.tif"
    write_labels_tiff(np.random.default_rng(0).integers(0, 9, (6, 48, 64)).astype(np.uint8), src)
    out = small_disk / target
    assert main(["export", "labels", str(src), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.iterdir()))}
    _fill(small_disk)
    capsys.readouterr()
    assert main(["export", "labels", str(src), "--out", str(out)]) == 1
    _one_line(capsys, "disk is full")
    assert {p: p.read_bytes() for p in before} == before and not _temps(small_disk)


def test_evaluate_out_on_a_full_disk_keeps_the_previous_result(small_disk, tmp_path, capsys):
    import _toy_method  # noqa: F401
    from PIL import Image

    from surgseg_core.cli.main import main

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(img).save(data / "images" / f"f{i}.png")
        Image.fromarray((img[..., 0] > 128).astype(np.uint8)).save(data / "masks" / f"f{i}.png")
    run = tmp_path / "run"
    assert main(["train", "toy", "--run-dir", str(run), "--set", "epochs=1", "--device", "cpu"]) == 0
    out = small_disk / "metrics.json"
    args = ["evaluate", "toy", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(data),
            "--out", str(out), "--set", "with_table=true"]
    assert main(args) == 0
    good = out.read_bytes(), out.with_suffix(".md").read_bytes()
    _fill(small_disk)
    capsys.readouterr()
    assert main(args + ["--overwrite"]) == 1
    _one_line(capsys, "disk is full", "previous files are kept")
    assert (out.read_bytes(), out.with_suffix(".md").read_bytes()) == good and not _temps(small_disk)


def test_variable_frame_rate_overlay_on_a_full_disk_keeps_the_good_file(small_disk, tmp_path):
    """The PyAV writer (variable frame rate) goes through the same check."""
    from _video_factory import write_vfr_video
    from surgseg_core.io.overlay import export_overlay_video

    times = np.cumsum([0.0] + [0.04, 0.1, 0.02, 0.3] * 10)
    src = write_vfr_video(tmp_path / "vfr.mp4", times, width=128, height=96)
    target = small_disk / "overlay.mp4"
    export_overlay_video(_noise(3), target, fps=10, crf=0)
    good = target.read_bytes()
    noisy = np.random.default_rng(2).integers(0, 256, (len(times), 96, 128), dtype=np.uint8)
    with pytest.raises(WriteError, match="disk is full.*previous file is kept"):
        export_overlay_video(src, target, labels=noisy % 7, crf=0)
    assert target.read_bytes() == good
    assert sorted(p.name for p in small_disk.iterdir()) == ["overlay.mp4", "overlay.mp4.provenance.json"]
