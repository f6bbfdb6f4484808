"""SIGKILL in the middle of writing results (issue 15): a real subprocess
runs the command and is killed at a moment the test controls (its writer
is patched to create a signal file there and wait); what is left on disk
must be complete, marked as such or not, and the next run must clean up."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _kill_helpers import kill, start, wait_for
from _video_factory import write_video

T, H, W = 6, 64, 80

# `surgseg track` with the random tiny model (object-present bias as in
# test_sam2_track.py); the 3rd PNG is half written when the kill comes.
TRACK = """
import io, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from surgseg_core.sam2_engine import build as build_module, outputs
flag = Path(sys.argv[1])
real_build = build_module.build_model
def build(*args, **kwargs):
    model = real_build(*args, **kwargs)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model
build_module.build_model = build
real_write, count = outputs._write_png, [0]
def write(path, labels, Image):
    count[0] += 1
    if count[0] == 3:
        buf = io.BytesIO()
        Image.fromarray(labels).save(buf, format="PNG")
        with outputs.atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            flag.write_text(str(tmp))
            while True:
                time.sleep(1)
    real_write(path, labels, Image)
outputs._write_png = write
from surgseg_core.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def clip_tif(tmp_path):
    return write_video(tmp_path / "clip.mp4", T, width=W, height=H, fps=10)


def test_track_killed_mid_run_leaves_complete_pngs_and_an_unfinished_folder(clip_tif, tmp_path, monkeypatch,
                                                                              capsys):
    import torch

    from surgseg_core.cli.main import main
    from surgseg_core.sam2_engine import build as build_module

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    out = tmp_path / "masks"
    args = ["track", str(clip_tif), "--box", "0", "10", "8", "50", "40", "--out", str(out)]
    proc = start(TRACK, tmp_path / "flag", *args, cwd=tmp_path, SURGSEG_WEIGHTS_DIR=str(tmp_path / "weights"))
    wait_for(proc, tmp_path / "flag", timeout=300)
    kill(proc)

    pngs = sorted(p for p in out.glob("*.png") if p.stem.isdigit())  # (pathlib's glob also matches hidden temps)
    assert [p.name for p in pngs] == ["000000.png", "000001.png"]  # the 3rd was being written
    for p in pngs:  # every PNG on disk is complete
        with Image.open(p) as im:
            im.load()
            assert im.size == (W, H)
    assert not (out / "provenance.json").exists()  # the folder is not marked complete
    assert any(p.name.startswith(".000002.png.tmp-") for p in out.iterdir())  # the killed write's temp

    real = build_module.build_model

    def biased(*a, **k):
        model = real(*a, **k)
        with torch.no_grad():
            model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
        return model

    monkeypatch.setattr(build_module, "build_model", biased)
    torch.set_num_threads(1)
    assert main(args) == 1  # re-running says how to continue
    assert "already holds 2 mask file(s) of an earlier run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(T)]  # and no temp
    tracking = json.loads((out / "provenance.json").read_text())["tracking"]
    assert tracking["status"] == "completed" and tracking["frames_written"] == T
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # the orphan went with the next write


# `surgseg export overlay`: the kill comes while frame 5 is being encoded.
EXPORT = """
import sys, time
from pathlib import Path
from surgseg_core.io import overlay
flag = Path(sys.argv[1])
real, count = overlay._frame_rgb, [0]
def frame_rgb(frame):
    count[0] += 1
    if count[0] == 5:
        flag.write_text("frame 5")
        while True:
            time.sleep(1)
    return real(frame)
overlay._frame_rgb = frame_rgb
from surgseg_core.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_overlay_export_killed_mid_write_keeps_the_previous_mp4(tmp_path):
    from surgseg_core.cli.main import main
    from surgseg_core.io import open_video

    clip = write_video(tmp_path / "clip.mp4", 12, width=64, height=48, fps=10)
    target = tmp_path / "out" / "overlay.mp4"
    args = ["export", "overlay", str(clip), "--out", str(target)]
    assert main(args + ["--step", "3"]) == 0
    good = target.read_bytes()

    proc = start(EXPORT, tmp_path / "flag", *args, cwd=tmp_path)
    wait_for(proc, tmp_path / "flag")
    kill(proc)  # with its ffmpeg
    assert target.read_bytes() == good
    with open_video(target) as video:
        assert len(video) == 4  # the previous export, whole
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name]  # what the kill left

    assert main(args) == 0
    # no orphan temp (the provenance sidecar is the new export's)
    assert sorted(p.name for p in target.parent.iterdir()) == ["overlay.mp4", "overlay.mp4.provenance.json"]
    with open_video(target) as video:
        assert len(video) == 12


# Autosave of a labels layer: killed while the 3rd frame of the TIFF is written.
AUTOSAVE = """
import sys, time
from pathlib import Path
import numpy as np
from surgseg_core.io import autosave
folder, flag = Path(sys.argv[1]), Path(sys.argv[2])

class Stack:  # the layer's data; the 3rd frame read while the TIFF is written never returns
    def __init__(self, data):
        self.data, self.shape, self.dtype, self.count = data, data.shape, data.dtype, 0
    def __getitem__(self, t):
        if isinstance(t, int):
            self.count += 1
            if self.count == 3:
                flag.write_text("frame 3")
                while True:
                    time.sleep(1)
        return self.data[t]

labels = Stack(np.full((5, 32, 40), 7, np.uint8))
autosave.save_layer_snapshot(folder, "tumour", "labels", labels, skip_unchanged=False)
"""


def test_autosave_killed_mid_save_keeps_the_previous_snapshot(tmp_path):
    from surgseg_core.io.autosave import list_snapshots, load_snapshot, save_layer_snapshot

    folder = tmp_path / "snap"
    before = np.zeros((5, 32, 40), np.uint8)
    before[:, 4:9, 5:20] = 3
    save_layer_snapshot(folder, "tumour", "labels", before)

    proc = start(AUTOSAVE, folder, tmp_path / "flag", cwd=tmp_path)
    wait_for(proc, tmp_path / "flag")
    kill(proc)
    assert [p for p in folder.iterdir() if ".tmp-" in p.name]  # the half-written TIFF's temp
    (entry,) = list_snapshots(folder)
    data, kwargs, kind = load_snapshot(entry)
    assert kind == "labels" and kwargs["name"] == "tumour"
    np.testing.assert_array_equal(np.asarray(data), before)  # the previous snapshot loads

    after = before + 1
    save_layer_snapshot(folder, "tumour", "labels", after)
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    np.testing.assert_array_equal(np.asarray(load_snapshot(list_snapshots(folder)[0])[0]), after)
