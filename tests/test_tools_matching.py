"""The paper's 15 px one-to-one matching and P/R/F1/L2 on hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from surgseg_core.methods.tools.evaluate import format_table
from surgseg_core.methods.tools.matching import LandmarkEvaluator, match_points


def test_two_tools_close_together_get_both_matches():
    truth = np.array([[100.0, 100.0], [112.0, 100.0]])  # two tips 12 px apart
    pred = np.array([[108.0, 100.0], [126.0, 100.0]])
    # greedy nearest-first would pair (108 -> 112, 4 px) and leave 126 unmatched (26 px from 100)
    pairs, d = match_points(pred, truth, 15.0)
    assert sorted(pairs) == [(0, 0), (1, 1)]
    assert d.tolist() == [8.0, 14.0]
    ev = LandmarkEvaluator()
    ev.add_frame("tip", pred, truth, ["grasp", "grasp"])
    s = ev.results()["tip"]["overall"]
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert s["f1"] == 1.0 and s["l2"] == pytest.approx(11.0)


def test_prediction_equidistant_from_two_truths_matches_one():
    truth = np.array([[100.0, 100.0], [120.0, 100.0]])
    pred = np.array([[110.0, 100.0]])
    pairs, d = match_points(pred, truth, 15.0)
    assert len(pairs) == 1 and d.tolist() == [10.0]
    ev = LandmarkEvaluator()
    ev.add_frame("tip", pred, truth, ["clip", "clip"])
    s = ev.results()["tip"]["overall"]
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    assert s["precision"] == 1.0 and s["recall"] == 0.5
    assert s["f1"] == pytest.approx(2 / 3) and s["l2"] == 10.0


def test_tolerance_is_inclusive_and_unmatched_points_count():
    assert len(match_points([[15.0, 0.0]], [[0.0, 0.0]], 15.0)[0]) == 1
    assert len(match_points([[9.0, 12.01]], [[0.0, 0.0]], 15.0)[0]) == 0
    ev = LandmarkEvaluator(tol=15.0)
    ev.add_frame("tip", [[9.0, 12.01]], [[0.0, 0.0]], ["dissect"])  # 15.006 px: FP + FN
    ev.add_frame("tip", [[50.0, 50.0]], np.zeros((0, 2)), [], frame_action="dissect")  # FP
    ev.add_frame("tip", np.zeros((0, 2)), np.zeros((0, 2)), [])  # nothing: no counts
    s = ev.results()["tip"]
    assert (s["overall"]["tp"], s["overall"]["fp"], s["overall"]["fn"]) == (0, 2, 1)
    assert s["overall"]["f1"] == 0.0 and math.isnan(s["overall"]["l2"])
    assert s["dissect"]["fp"] == 2


def test_per_action_and_per_type_bookkeeping_and_table():
    ev = LandmarkEvaluator()
    # frame 1: grasp; tip found at 3 px, anchor missed
    ev.add_frame("tip", [[3.0, 4.0]], [[0.0, 0.0]], ["grasp"])
    ev.add_frame("anchor", np.zeros((0, 2)), [[10.0, 10.0]], ["grasp"])
    # frame 2: clip; the tip prediction is on the anchor: a type mismatch is FP + FN for tip, FN for anchor
    ev.add_frame("tip", [[40.0, 40.0]], [[60.0, 60.0]], ["clip"])
    ev.add_frame("anchor", np.zeros((0, 2)), [[40.0, 40.0]], ["clip"])
    r = ev.results()
    assert r["tip"]["grasp"]["f1"] == 1.0 and r["tip"]["grasp"]["l2"] == 5.0
    assert (r["tip"]["clip"]["tp"], r["tip"]["clip"]["fp"], r["tip"]["clip"]["fn"]) == (0, 1, 1)
    assert r["tip"]["overall"]["precision"] == 0.5 and r["tip"]["overall"]["recall"] == 0.5
    assert r["anchor"]["overall"]["fn"] == 2 and r["anchor"]["overall"]["f1"] == 0.0
    assert math.isnan(r["anchor"]["overall"]["precision"])  # nothing predicted
    table = format_table({"coarse": ev})
    lines = table.splitlines()
    assert lines[1].split()[:6] == ["Method", "LM", "Clip", "F1", "Clip", "L2"]
    tip_row = next(line for line in lines if line.startswith("coarse") and "Tip" in line).split()
    # clip F1, clip L2, grasp F1, grasp L2, P, R, F1, L2
    assert tip_row[2:] == ["0.0", "-", "100.0", "5.00", "50.0", "50.0", "50.0", "5.00"]
