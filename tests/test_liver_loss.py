"""Liver loss terms (paper eq. 2) and class weights (eq. 1) against values
worked out by hand for a 2-class, 2-pixel example:

logits pixel 0 = pixel 1 = [0, ln 3]  ->  p = [0.25, 0.75] at both pixels
target pixel 0 = class 1, pixel 1 = class 0.
"""
import math

import numpy as np
import pytest
import torch

from surgseg_core.errors import ConfigError
from surgseg_core.methods.liver.class_weights import class_weights_from_counts, count_class_pixels
from surgseg_core.methods.liver.loss import (
    LossWeights,
    composite_loss,
    focal_tversky_loss,
    huber_loss,
    one_hot,
    soft_dice_loss,
    weighted_cross_entropy,
)


def _example(requires_grad=False):
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).repeat(1, 1, 1, 2)
    logits.requires_grad_(requires_grad)
    target = torch.tensor([[[1, 0]]])
    return logits, target


def test_weighted_ce_hand_value():
    logits, target = _example()
    # nll(pixel0) = -ln 0.75 (class 1, weight 2); nll(pixel1) = -ln 0.25 (class 0, weight 1)
    expected = (2 * -math.log(0.75) + 1 * -math.log(0.25)) / 3
    got = weighted_cross_entropy(logits, target, torch.tensor([1.0, 2.0]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unweighted = (-math.log(0.75) - math.log(0.25)) / 2
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(unweighted, rel=1e-6)


def test_soft_dice_includes_background_hand_value():
    logits, target = _example()
    probs, oh = logits.softmax(1), one_hot(target, 2)
    # class 0: inter 0.25, sum p 0.5, sum g 1 -> (0.5 + 1) / (1.5 + 1)
    # class 1: inter 0.75, sum p 1.5, sum g 1 -> (1.5 + 1) / (2.5 + 1)
    expected = 1 - ((1.5 / 2.5) + (2.5 / 3.5)) / 2
    assert soft_dice_loss(probs, oh, smooth=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_huber_on_probabilities_hand_value():
    logits, target = _example()
    probs, oh = logits.softmax(1), one_hot(target, 2)
    # differences: pixel0 (0.25, -0.25), pixel1 (-0.75, 0.75)
    assert huber_loss(probs, oh, 1.0).item() == pytest.approx((2 * 0.5 * 0.25**2 + 2 * 0.5 * 0.75**2) / 4)
    # delta 0.5: the 0.75 errors are in the linear part: 0.5 * (0.75 - 0.25)
    assert huber_loss(probs, oh, 0.5).item() == pytest.approx((2 * 0.5 * 0.25**2 + 2 * 0.5 * 0.5) / 4)


def test_focal_tversky_hand_value():
    logits, target = _example()
    probs, oh = logits.softmax(1), one_hot(target, 2)
    a, b, s, e = 0.7, 0.3, 1.0, 0.75
    # class 0: TP 0.25, FN 0.75, FP 0.25; class 1: TP 0.75, FN 0.25, FP 0.75
    ti0 = (0.25 + s) / (0.25 + a * 0.75 + b * 0.25 + s)
    ti1 = (0.75 + s) / (0.75 + a * 0.25 + b * 0.75 + s)
    expected = ((1 - ti0) ** e + (1 - ti1) ** e) / 2
    assert focal_tversky_loss(probs, oh, a, b, e, s).item() == pytest.approx(expected, rel=1e-6)


def test_composite_is_weighted_sum_and_every_term_has_gradient():
    logits, target = _example(requires_grad=True)
    cw = torch.tensor([1.0, 2.0])
    parts = {}
    for name, w in {"alpha": (1, 0, 0, 0), "beta": (0, 1, 0, 0), "gamma": (0, 0, 1, 0), "delta": (0, 0, 0, 1)}.items():
        loss = composite_loss(logits, target, LossWeights(*w), cw)
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.abs().sum() > 0, f"{name} term has no gradient"
        parts[name] = loss.item()
    total = composite_loss(logits, target, LossWeights(0.75, 0.5, 0.25, 0.25), cw).item()
    expected = 0.75 * parts["alpha"] + 0.5 * parts["beta"] + 0.25 * parts["gamma"] + 0.25 * parts["delta"]
    assert total == pytest.approx(expected, rel=1e-6)


def test_loss_weights_validation():
    with pytest.raises(ConfigError):
        LossWeights.from_config({"loss_alpha": 0, "loss_beta": 0, "loss_gamma": 0, "loss_delta": 0})
    with pytest.raises(ConfigError):
        LossWeights.from_config({"loss_alpha": -1})
    assert LossWeights.from_config({"loss_alpha": 0.75, "loss_delta": 0.25}) == LossWeights(0.75, 0, 0, 0.25)


def test_class_weights_eq1_by_hand():
    counts = count_class_pixels([np.array([[0] * 49 + [1]]), np.array([[0] * 49 + [2]])], 4)
    assert counts.tolist() == [98, 1, 1, 0]
    w = class_weights_from_counts(counts)
    # background: ln(100/98) < 1 -> 1; classes 1, 2: ln(100); absent class 3: the largest present weight
    assert w[0] == 1.0
    assert w[1] == pytest.approx(math.log(100)) and w[2] == pytest.approx(math.log(100))
    assert w[3] == pytest.approx(math.log(100))
    assert np.all(np.isfinite(class_weights_from_counts([0, 0, 0, 0])))


def test_count_rejects_out_of_range_labels():
    from surgseg_core.errors import DatasetError

    with pytest.raises(DatasetError):
        count_class_pixels([np.array([[0, 7]])], 4)
