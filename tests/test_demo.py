"""The README's first command: ``surgseg demo`` on the bundled sample
(quick mode, with the session's small liver checkpoint instead of training)."""
import json
from pathlib import Path

import pytest

from _liver_helpers import trained_liver_model

pytestmark = pytest.mark.slow


def test_demo_quick_writes_report_summary_and_outputs(tmp_path, monkeypatch):
    from surgseg_core.cli.main import main
    from surgseg_core.methods.liver import _fast

    # no official SAM2 weights in the cache: the bundled demonstration SAM2 (sample_data/sam2_demo)
    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    result, _, _ = trained_liver_model()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu",
                 "--liver-checkpoint", str(result.best_checkpoint)]) == 0
    report = (out / "report.md").read_text()
    for heading in ("## 1. Video I/O", "## 3. Liver landmarks"):
        assert heading in report
    assert "equals sequential decoding: **True**" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"]["random_equals_sequential"] is True
    assert summary["sam2"]["weights"] == "surgseg-demo-sam2"
    assert "not a clinical model" in report and "held-out synthetic clips" in report
    card = json.loads((Path(__file__).parents[1] / "sample_data/sam2_demo/weights.json").read_text())
    assert summary["sam2"]["heldout_mean_iou"] == pytest.approx(card["metrics"]["heldout_mean_iou"])
    # the demo's own clip, tracked from boxes on frame 0: real masks, not the random model's nothing
    assert summary["sam2"]["mean_iou_vs_ground_truth"] > 0.5
    assert "Mean IoU against the ground truth: 0.000" not in report
    liver = summary["liver"]
    assert liver["metrics"]["post/mean/dice"] > 0.3  # the small session model on the held-out sample
    assert liver["postprocess_kernels"] == ("compiled" if _fast.kernels is not None else "numpy")
    assert 0 < liver["postprocess_ms_per_frame"] < 1000
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
