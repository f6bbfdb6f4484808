"""Tool landmark annotation format: CSV and JSON readers, clear errors, and the
synthetic generator writing it (active tool only)."""
from __future__ import annotations

import json

import pytest

from surgseg_core.errors import DatasetError
from surgseg_core.methods.tools.annotations import (
    ToolAnnotation,
    read_annotations,
    validate_against_videos,
    write_annotations,
)

HEADER = "video,frame,tool_id,tool_type,action,tip_x,tip_y,anchor_x,anchor_y\n"


def _csv(tmp_path, body: str, name="tool_annotations.csv"):
    p = tmp_path / name
    p.write_text(HEADER + body)
    return p


def test_csv_and_json_round_trip(tmp_path):
    recs = [ToolAnnotation("v.mp4", 3, 2, "grasper", "grasp", (10.5, 20.25), (30.0, 40.0)),
            ToolAnnotation("v.mp4", 4, 2, "grasper", "grasp", None, (31.0, 41.0)),  # tip hidden
            ToolAnnotation("v.mp4", 5, None, None, None, None, None)]  # annotated: no active tool
    for name in ("a.csv", "a.json"):
        path = write_annotations(tmp_path / name, recs)
        assert read_annotations(path) == recs
    assert recs[2].negative and not recs[0].negative


def test_csv_row_without_tool_is_a_negative_frame(tmp_path):
    recs = read_annotations(_csv(tmp_path, "v.mp4,7,,,,,,,\n"))
    assert recs == [ToolAnnotation("v.mp4", 7, None, None, None, None, None)]


@pytest.mark.parametrize("body, message", [
    ("v.mp4,1,1,grasper,suture,1,2,3,4\n", r"line 2: unknown action 'suture'; known actions: clip, grasp"),
    ("v.mp4,x,1,grasper,grasp,1,2,3,4\n", "frame must be a whole number"),
    ("v.mp4,1,1,grasper,grasp,1,,3,4\n", "tip_x and tip_y go together"),
    ("v.mp4,1,1,grasper,grasp,,,,\n", "neither a tip nor an anchor"),
    ("v.mp4,1,,,,1,2,3,4\n", "without a tool_id"),
    (",1,1,grasper,grasp,1,2,3,4\n", "'video' is empty"),
    ("v.mp4,1,1,grasper,grasp,1,2,3,4\nv.mp4,1,1,grasper,grasp,1,2,3,4\n", "has tool 1 twice"),
    ("v.mp4,1,1,grasper,grasp,1,2,3,4\nv.mp4,1,,,,,,,\n", "no active tool"),
    ("v.mp4,1,1,grasper,grasp,nan,2,3,4\n", "NaN"),
])
def test_csv_errors_name_the_line_and_problem(tmp_path, body, message):
    with pytest.raises(DatasetError, match=message):
        read_annotations(_csv(tmp_path, body))


def test_csv_missing_column_and_json_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("video,frame,tool_id\nv.mp4,1,1\n")
    with pytest.raises(DatasetError, match="missing column.*tool_type"):
        read_annotations(p)
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_annotations(p)
    p.write_text(json.dumps({"annotations": [{"video": "v.mp4", "frame": 0, "tool_id": 1, "action": "grasp",
                                              "tip": [1, 2, 3], "anchor": None}]}))
    with pytest.raises(DatasetError, match=r"annotation 0: tip must be \[x, y\]"):
        read_annotations(p)
    p.write_text(json.dumps({"annotations": [{"video": "v.mp4", "frame": 0, "tool_id": 1, "action": "poke",
                                              "tip": [1, 2], "anchor": None}]}))
    with pytest.raises(DatasetError, match="unknown action 'poke'"):
        read_annotations(p)
    bad = tmp_path / "x.txt"
    bad.write_text("")
    with pytest.raises(DatasetError, match="must be .csv or .json"):
        read_annotations(bad)


def test_validation_against_the_video(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")  # exists; sizes come from video_info
    info = lambda path: (10, 48, 64)  # noqa: E731  (frames, height, width)
    ok = [ToolAnnotation("v.mp4", 9, 1, "grasper", "grasp", (63.4, 0.0), (-0.5, 47.5))]
    validate_against_videos(ok, tmp_path, info)
    with pytest.raises(DatasetError, match=r"frame 10 of v.mp4 does not exist \(the video has 10 frames"):
        validate_against_videos([ToolAnnotation("v.mp4", 10, 1, "g", "grasp", (1, 1), None)], tmp_path, info)
    with pytest.raises(DatasetError, match=r"tip \(64, 5\) is outside the 64x48 image"):
        validate_against_videos([ToolAnnotation("v.mp4", 1, 1, "g", "grasp", (64, 5), None)], tmp_path, info)
    with pytest.raises(DatasetError, match=r"anchor \(3, -1\) is outside"):
        validate_against_videos([ToolAnnotation("v.mp4", 1, 1, "g", "grasp", None, (3, -1))], tmp_path, info)
    with pytest.raises(DatasetError, match="video 'w.mp4' not found"):
        validate_against_videos([ToolAnnotation("w.mp4", 1, 1, "g", "grasp", (1, 1), None)], tmp_path, info)


def test_synthetic_clip_writes_the_format_with_the_active_tool_only(tmp_path):
    from surgseg_core.methods.tools.data import find_samples
    from surgseg_core.synth import generate_endoscopy_clip, read_tool_landmarks, write_synthetic_clip

    out = write_synthetic_clip(tmp_path / "clip", seed=3, n_frames=40, height=96, width=128)
    recs = read_annotations(out / "tool_annotations.csv")
    all_visible = read_tool_landmarks(out / "tool_landmarks.csv")
    assert sorted(r.frame for r in recs) == list(range(40))  # every frame annotated (some negative)
    clip = generate_endoscopy_clip(seed=3, n_frames=40, height=96, width=128)
    several = 0
    for r in recs:
        visible = all_visible.get(r.frame, [])
        if r.negative:
            assert visible == []
            continue
        (active,) = [lm for lm in visible if lm["active"]]
        assert r.tool_id == active["instrument_id"] and r.action == active["action"]
        assert r.tip == pytest.approx(active["tip"], abs=1e-3)
        several += len(visible) > 1
    # the clip shows several tools at once in some frames, and only one is labelled there
    assert several > 0
    assert len(recs) == 40  # one row per frame: never a row for an inactive tool
    # the dataset reader accepts it (frames exist, points inside the image)
    samples = find_samples(tmp_path)
    assert len(samples) == 40
    # the labelled tip lies on the labelled tool's pixels
    for s in samples:
        for r in s.records:
            ids = clip.frame(s.frame).instruments
            assert ids[int(round(r.tip[1])), int(round(r.tip[0]))] == r.tool_id
