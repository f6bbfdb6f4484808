"""The README's first command: ``surgseg demo`` on the bundled sample with
the bundled demonstration weights (the session's small liver checkpoint
instead of training one)."""
import json
from pathlib import Path

import numpy as np
import pytest

from _liver_helpers import trained_liver_model

pytestmark = pytest.mark.slow


def test_demo_runs_every_method_and_each_scores_near_its_model_card(tmp_path, monkeypatch, capsys):
    """The README's first command on the 24-frame sample (the liver model
    given, not trained: the liver tests train it): every output file, a
    summary line per method, and each method's score on the sample within
    its margin of the held-out score its model card states (read from the
    bundled weights.json, not typed here)."""
    import tifffile

    from surgseg_core.cli.main import main
    from surgseg_core.io import open_video
    from surgseg_core.methods.liver import _fast

    # no official SAM2 weights in the cache: the bundled demonstration models (sample_data/*_demo)
    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    result, _, _ = trained_liver_model()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--liver-checkpoint", str(result.best_checkpoint)]) == 0
    printed = capsys.readouterr().out
    for step in ("sam2", "anatomy", "clicks", "tools", "liver"):
        assert any(line.startswith(step) for line in printed.splitlines()), printed
    assert f"results in {out}" in printed
    report = (out / "report.md").read_text()
    for heading in ("## Video I/O", "## SAM2 streaming propagation", "## Anatomy (F2PASeg)", "## Clicks (RP-SAM2)",
                    "## Tool landmarks", "## Liver landmarks", "## Pictures"):
        assert heading in report
    assert "equals sequential decoding: **True**" in report and "not a clinical model" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sam2"]["weights"] == "surgseg-demo-sam2"
    scores = json.loads((out / "scores.json").read_text())
    cards = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
             for p in (Path(__file__).parents[1] / "sample_data").glob("*_demo/weights.json")}
    for step, name in (("sam2", "surgseg-demo-sam2"), ("anatomy", "surgseg-demo-f2paseg"),
                       ("clicks", "surgseg-demo-rpsam2"), ("tools", "surgseg-demo-tools")):
        s = scores[step]
        assert s["heldout"] is not None and name in cards, (step, s)
        assert s["heldout"] in cards[name]["metrics"].values()
        assert s["score"] >= s["heldout"] - s["margin"], (step, s)
    # every output file, complete
    with open_video(out / "all_results_overlay.mp4") as v:
        assert len(v) == 24 and v[0].shape[:2] == (480, 640)  # 2 x 2 tiles of the 320 x 240 clip
    from surgseg_core.provenance import read_provenance

    for name, weights in (("anatomy_labels.tif", "surgseg-demo-f2paseg"), ("clicks_tracked_labels.tif",
                                                                           "surgseg-demo-rpsam2")):
        labels = tifffile.imread(out / name)
        assert labels.shape == (24, 240, 320) and labels.max() > 0
        prov = read_provenance(out / name)  # which weights, which video (by hash), which frames
        assert prov["model_name"] == weights and prov["model_sha256"] == cards[weights]["sha256"]
        assert prov["source_video_sha256"] and prov["frames"] == list(range(24))
    from surgseg_core.methods.f2paseg.classes import PAS

    assert set(np.unique(tifffile.imread(out / "anatomy_labels.tif"))) <= {0, *PAS.ids}
    csv_rows = (out / "sample_clip_tool_landmarks.csv").read_text().splitlines()
    assert len(csv_rows) > 24 and json.loads((out / "sample_clip_tool_landmarks.json").read_text())["predictions"]
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as im:
        assert im.width > 1000 and im.height > 800  # 5 rows: four sample-clip methods and the liver
    assert len(list((out / "sam2_masks").glob("*.png"))) == 24
    liver = summary["liver"]
    assert liver["metrics"]["post/mean/dice"] > 0.3  # the small session model on the held-out sample
    assert liver["postprocess_kernels"] == ("compiled" if _fast.kernels is not None else "numpy")
    for name in (summary["video"]["overlay"], liver["figure"]):
        assert (out / name).stat().st_size > 0


def test_demo_registers_its_liver_model_for_the_liver_widget(tmp_path, monkeypatch, make_napari_viewer):
    """The liver model the demo trains is offered in the liver widget's
    "Registered" list, like one trained from the Train widget."""
    from napari_surgseg.widgets.liver import LiverLandmarksWidget
    from surgseg_core.demo import DEMO_LIVER_WEIGHTS, run_demo
    from surgseg_core.weights import list_weights

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    widget = LiverLandmarksWidget(make_napari_viewer())  # opened before the demo ran
    native = widget.weights_combo.native

    def offered():
        return [native.itemText(i) for i in range(native.count())]

    assert DEMO_LIVER_WEIGHTS not in offered()
    run_demo(tmp_path / "demo", quick=True, device="cpu", steps=["liver"])
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["liver"]["registered_as"] == DEMO_LIVER_WEIGHTS
    entries = {e.name: e for e in list_weights(method="liver")}
    assert entries[DEMO_LIVER_WEIGHTS].path == str(Path(summary["liver"]["checkpoint"]).resolve())
    widget.reset_choices()
    assert DEMO_LIVER_WEIGHTS in offered()
    widget.weights_combo.value = entries[DEMO_LIVER_WEIGHTS].path
    assert widget.weights_combo.value == entries[DEMO_LIVER_WEIGHTS].path
