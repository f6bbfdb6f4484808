"""The pieces of ``surgseg predict tools`` the widget shares: tip-anchor
pairing into tools, the per-frame sink writing heatmap and prior stacks,
corrected points as annotation records, and replacing a frame in an
annotation file without losing the others."""
from __future__ import annotations

import numpy as np
import pytest

from surgseg_core.errors import DatasetError, SurgsegError


def test_pair_tools_matches_nearest_tips_and_anchors():
    from surgseg_core.methods.tools.predict import pair_tools, rows_of

    tips = np.array([[10.0, 10.0, 0.9], [100.0, 50.0, 0.8]])
    anchors = np.array([[105.0, 55.0, 0.7], [12.0, 20.0, 0.6], [300.0, 300.0, 0.5]])
    tip_ids, anchor_ids = pair_tools(tips, anchors)
    assert tip_ids.tolist() == [1, 2]
    assert anchor_ids.tolist() == [2, 1, 3]  # nearest pairs share an id; the extra anchor gets its own
    assert pair_tools(np.zeros((0, 3)), anchors[:1])[1].tolist() == [1]
    rows = rows_of("v.mp4", [{"frame": 4, "tip": tips[:1], "anchor": anchors[1:2]}])
    assert rows == [["v.mp4", 4, "tip", 1, 10.0, 10.0, 0.9], ["v.mp4", 4, "anchor", 1, 12.0, 20.0, 0.6]]


def test_stack_sink_writes_frames_and_keeps_only_points():
    from surgseg_core.methods.tools.predict import StackSink

    heat = [np.zeros((3, 2, 2), np.uint8) for _ in range(2)]
    prior = np.zeros((3, 4, 4), np.uint8)
    sink = StackSink(heat, prior)
    hm = np.array([[[-0.5, 0.5], [1.0, 2.0]], [[0.0, 0.25], [0.0, 0.0]]], np.float32)
    m = np.zeros((4, 4), np.float32)
    m[1:3, 1:3] = 0.8
    sink({"frame": 1, "tip": np.zeros((0, 3)), "anchor": np.zeros((0, 3)), "heatmaps": hm, "prior": m})
    assert heat[0][1].tolist() == [[0, 128], [255, 255]] and heat[1][1].tolist() == [[0, 64], [0, 0]]
    assert not heat[0][[0, 2]].any() and prior[1].sum() == 4 and prior[1, 1:3, 1:3].all()
    assert set(sink.records[0]) == {"frame", "tip", "anchor"}  # heatmaps and priors are not kept


def test_corrected_points_become_records_and_replace_their_frame(tmp_path):
    from surgseg_core.methods.tools.annotations import (
        ToolAnnotation, read_annotations, records_from_points, replace_frames, write_annotations,
    )

    recs = records_from_points("v.mp4", 3, [("tip", 2, 5.0, 6.0), ("anchor", 2, 7.0, 8.0), ("tip", 1, 1.0, 2.0)],
                               action="grasp", tool_types={2: "hook"})
    assert [(r.tool_id, r.tip, r.anchor, r.tool_type) for r in recs] == [
        (1, (1.0, 2.0), None, None), (2, (5.0, 6.0), (7.0, 8.0), "hook")]
    assert records_from_points("v.mp4", 3, [], action="grasp")[0].negative  # no points: no active tool
    with pytest.raises(DatasetError, match="tool 1 has two tips"):
        records_from_points("v.mp4", 3, [("tip", 1, 0, 0), ("tip", 1, 1, 1)], action="grasp")
    with pytest.raises(DatasetError, match="unknown action"):
        records_from_points("v.mp4", 3, [("tip", 1, 0, 0)], action="wave")
    for name in ("a.csv", "a.json"):
        path = tmp_path / name
        old = [ToolAnnotation("v.mp4", 3, 9, None, "cut", (0.0, 0.0), None),
               ToolAnnotation("v.mp4", 5, None, None, None, None, None)]
        write_annotations(path, old)
        replace_frames(path, recs)
        assert read_annotations(path) == [*recs, old[1]]  # frame 3 replaced, frame 5 kept
    bad = tmp_path / "broken.csv"
    bad.write_text("not,an,annotation,file\n")
    with pytest.raises(DatasetError, match="missing column"):
        replace_frames(bad, recs)
    assert bad.read_text() == "not,an,annotation,file\n"  # never overwritten


def test_prediction_file_by_suffix_with_missing_scores(tmp_path):
    import json

    from surgseg_core.errors import SurgsegError
    from surgseg_core.methods.tools.predict import write_prediction_file

    rows = [["x", 2, "tip", 1, 3.5, 4.0, None]]
    assert write_prediction_file(tmp_path / "p.csv", "v.mp4", rows, {}).read_text().splitlines() == [
        "video,frame,type,tool,x,y,score", "v.mp4,2,tip,1,3.5,4.0,"]
    obj = json.loads(write_prediction_file(tmp_path / "p.json", "v.mp4", rows, {"m": 1}).read_text())
    assert obj["predictions"] == [{"video": "v.mp4", "frame": 2, "type": "tip", "tool": 1, "x": 3.5, "y": 4.0,
                                   "score": None}] and obj["provenance"] == {"m": 1}
    with pytest.raises(SurgsegError, match=".csv or .json"):
        write_prediction_file(tmp_path / "p.txt", "v.mp4", rows, {})


def test_registered_weights_give_their_config_and_model(tmp_path, monkeypatch):
    """What the widget reads before a run (the config, without the tensors)
    and what its worker loads, from a checkpoint registered by name."""
    import torch

    from surgseg_core.methods.tools.predict import TINY_RANDOM_CONFIG, load_tools_model, model_config
    from surgseg_core.training.checkpoint import save_checkpoint
    from surgseg_core.weights import register_checkpoint

    monkeypatch.setenv("SURGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    small = {**TINY_RANDOM_CONFIG, "input_width": 32, "input_height": 32, "threshold": 0.2}
    model, cfg, provider = load_tools_model(None, device="cpu", config=small)
    assert cfg["random_weights"] and provider is not None  # the refinement stage prompts SAM2
    path = save_checkpoint(tmp_path / "best.pt", {"method": "tools", "model": model.state_dict(), "config": small})
    register_checkpoint(path, name="my-tools", method="tools")
    got = model_config("my-tools")
    assert (got["input_width"], got["input_height"], got["stage"], got["threshold"]) == (32, 32, "refine", 0.2)
    loaded, cfg2, provider2 = load_tools_model("my-tools", device="cpu")
    assert cfg2["random_weights"] is False and provider2 is not None
    clip, prior = torch.rand(1, 3, 3, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(clip, prior)["refined"], model(clip, prior)["refined"])
    with pytest.raises(SurgsegError, match="not found"):
        model_config(str(tmp_path / "missing.pt"))


def test_model_config_of_bundled_safetensors_weights_without_reading_tensors():
    """The widget sizes its heatmap stacks from the weights' config before
    loading them: a safetensors export's config (its metadata) is read, not
    the defaults (the bundled demo networks run at 80 x 64, not 160 x 128)."""
    from surgseg_core.methods.tools.demo import DEMO_NAME
    from surgseg_core.methods.tools.predict import model_config
    from surgseg_core.weights import get_entry, read_checkpoint

    entry = get_entry(DEMO_NAME)
    if entry is None or not entry.present:
        pytest.skip("no bundled demo tool networks in sample_data/")
    cfg = model_config(DEMO_NAME)
    saved = read_checkpoint(entry.file)["config"]
    assert (cfg["input_width"], cfg["input_height"], cfg["stage"]) == (saved["input_width"], saved["input_height"],
                                                                       saved["stage"])
