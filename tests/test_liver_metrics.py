"""P, Dice and the symmetric distance G (paper eq. 4) against hand values
and a brute-force implementation."""
import math

import numpy as np
import pytest

from surgseg_core.methods.liver.metrics import (
    MetricAccumulator,
    cldice,
    dice,
    image_metrics,
    precision,
    symmetric_distance,
    symmetric_distance_bruteforce,
)


def _line(row, c0=0, c1=10, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[row, c0:c1] = True
    return m


def test_g_of_curve_with_itself_is_zero_and_empty_prediction_is_one():
    gt = _line(5)
    assert symmetric_distance(gt, gt, 10) == 0.0
    assert symmetric_distance(np.zeros_like(gt), gt, 10) == 1.0


def test_g_shifted_curve_by_hand():
    gt, pred = _line(5), _line(8)  # 10 px, shifted 3 rows
    # d_max 10: no FP, no FN; each side sums 10 * 3 -> 60 / (2 * 10 * 10)
    assert symmetric_distance(pred, gt, 10) == pytest.approx(60 / 200)
    # d_max 2: every predicted pixel is FP, every truth pixel FN
    assert symmetric_distance(pred, gt, 2) == pytest.approx(10 / (400 - 2 * 10 * 2) + 1.0)


def test_g_partial_prediction_by_hand():
    gt, pred = _line(5), _line(5, 0, 5)
    # d_max 2: FN = columns 7, 8, 9; kept truth columns 5, 6 lie 1 and 2 px from B
    assert symmetric_distance(pred, gt, 2) == pytest.approx(3 / (2 * 10 * 2) + 3 / 10)
    assert precision(pred, gt) == 1.0
    assert dice(pred, gt) == pytest.approx(2 * 5 / 15)


def test_g_distance_transform_matches_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(25):
        gt = np.zeros((24, 30), bool)
        r = rng.integers(3, 20)
        gt[r:r + 2, rng.integers(0, 10):rng.integers(15, 30)] = True
        pred = np.zeros_like(gt)
        pred[rng.integers(0, 24, 12), rng.integers(0, 30, 12)] = True
        if trial % 2:
            pred |= np.roll(gt, rng.integers(-4, 5), axis=0)
        for d_max in (3.0, 10.0):
            assert symmetric_distance(pred, gt, d_max) == pytest.approx(symmetric_distance_bruteforce(pred, gt, d_max))


def test_absent_class_is_nan_and_excluded_from_means():
    gt = np.zeros((20, 20), np.uint8)
    gt[5, 2:15] = 1  # only silhouette
    pred = gt.copy()
    m = image_metrics(pred, gt, 10)
    assert m["silhouette"]["dice"] == 1.0 and m["silhouette"]["G"] == 0.0
    assert math.isnan(m["ridge"]["dice"]) and math.isnan(m["ligament"]["G"])
    assert m["mean"]["dice"] == 1.0 and m["mean"]["G"] == 0.0

    acc = MetricAccumulator(10)
    acc.add(pred, gt)
    gt2 = np.zeros_like(gt)
    gt2[10, 2:15] = 2
    acc.add(np.zeros_like(gt), gt2)  # ridge missed completely
    res = acc.result()
    assert res["silhouette"]["dice"] == 1.0
    assert res["ridge"]["dice"] == 0.0 and res["ridge"]["G"] == 1.0
    assert res["mean"]["dice"] == 0.5


def test_cldice():
    gt = np.zeros((30, 30), bool)
    gt[10:15, 2:28] = True
    assert cldice(gt, gt) == 1.0
    assert cldice(np.zeros_like(gt), gt) == 0.0
    half = gt.copy()
    half[:, 15:] = False
    assert 0.0 < cldice(half, gt) < 1.0
