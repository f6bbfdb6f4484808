"""Writing into a read-only folder (issue 15): every command says in one line
which folder cannot be written and what to do, no traceback. Root ignores
permission bits, so the folder is a read-only tmpfs mount (skipped with the
reason where this process may not mount)."""
from __future__ import annotations


import numpy as np
import pytest

from _tmpfs import mounted_tmpfs

from surgseg_core.cli.main import main


@pytest.fixture
def ro_dir(tmp_path):
    with mounted_tmpfs(tmp_path, "ro,size=100k", "a read-only tmpfs") as mnt:
        yield mnt


def _says_read_only(capsys, folder):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("surgseg:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    assert f"{folder} is on a read-only file system" in errors[0], err
    assert "choose a writable output folder" in errors[0], err


@pytest.fixture
def trained(tmp_path):
    import _toy_method  # noqa: F401  (registers "toy")

    run = tmp_path / "run"
    assert main(["train", "toy", "--run-dir", str(run), "--set", "epochs=1", "--device", "cpu"]) == 0
    return run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("sub", ["", "run"])  # the folder itself, or a new folder inside it
def test_train_into_a_read_only_folder(ro_dir, capsys, sub):
    import _toy_method  # noqa: F401

    assert main(["train", "toy", "--run-dir", str(ro_dir / sub), "--set", "epochs=1", "--device", "cpu"]) == 1
    _says_read_only(capsys, ro_dir)


def test_evaluate_and_predict_into_a_read_only_folder(ro_dir, trained, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(data / "images" / "f0.png")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(data / "masks" / "f0.png")
    capsys.readouterr()
    assert main(["evaluate", "toy", "--checkpoint", str(trained), "--data", str(data),
                 "--out", str(ro_dir / "metrics.json")]) == 1
    _says_read_only(capsys, ro_dir)
    assert main(["predict", "toy", "--checkpoint", str(trained), str(data / "images"),
                 "--out", str(ro_dir / "preds")]) == 1
    _says_read_only(capsys, ro_dir)


@pytest.mark.parametrize("sub", ["", "masks"])
def test_track_into_a_read_only_folder(ro_dir, tmp_path, monkeypatch, capsys, sub):
    from _video_factory import write_video

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    clip = write_video(tmp_path / "clip.mp4", 3, width=64, height=48, fps=10)
    assert main(["track", str(clip), "--box", "0", "8", "8", "40", "30", "--out", str(ro_dir / sub)]) == 1
    _says_read_only(capsys, ro_dir)


@pytest.mark.parametrize("target", ["labels.tif", "pngs", "overlay.mp4"])
def test_export_into_a_read_only_folder(ro_dir, tmp_path, capsys, target):
    from _video_factory import write_video
    from surgseg_core.io.export import write_labels_tiff

    src = tmp_path / "src.tif"
    write_labels_tiff(np.ones((3, 48, 64), np.uint8), src)
    if target.endswith(".mp4"):
        clip = write_video(tmp_path / "clip.mp4", 3, width=64, height=48, fps=10)
        args = ["export", "overlay", str(clip), "--labels", str(src), "--out", str(ro_dir / target)]
    else:
        args = ["export", "labels", str(src), "--out", str(ro_dir / target)]
    assert main(args) == 1
    _says_read_only(capsys, ro_dir)


def test_a_folder_without_write_permission_says_so(tmp_path, monkeypatch, capsys):
    """Root ignores permission bits: the refusal is simulated where the
    temporary file is created (what a non-root user meets)."""
    import errno
    import tempfile

    from surgseg_core.io.export import write_labels_tiff

    src = tmp_path / "src.tif"
    write_labels_tiff(np.ones((2, 8, 8), np.uint8), src)
    (tmp_path / "shared").mkdir()

    def refuse(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["export", "labels", str(src), "--out", str(tmp_path / "shared" / "out.tif")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"no permission to write in {tmp_path / 'shared'}; choose a folder you can write to" in err
