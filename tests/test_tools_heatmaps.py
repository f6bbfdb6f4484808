"""Tool landmark targets, the direct ablation's mask-augmented target and
gated loss (hand values), and peak decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from surgseg_core.methods.tools.heatmaps import (
    decode_peaks,
    gated_loss,
    gaussian_heatmap,
    heatmap_loss,
    mask_augmented_targets,
    targets,
    to_heatmap,
    to_image,
)

E = np.exp(-0.5)


def test_gaussian_target_hand_values():
    h = gaussian_heatmap([(2, 1)], 3, 5, sigma=1.0)
    assert h[1, 2] == pytest.approx(1.0)
    assert h[1, 3] == pytest.approx(E)
    assert h[2, 4] == pytest.approx(np.exp(-2.5))
    # two points: the maximum, not the sum
    h2 = gaussian_heatmap([(0, 0), (1, 0)], 1, 2, sigma=1.0)
    np.testing.assert_allclose(h2, [[1.0, 1.0]])
    t = targets([[(2, 1)], []], 3, 5, 1.0)  # a type without points: all zero
    assert t.shape == (2, 3, 5) and t[1].max() == 0.0


MASK = np.array([[0, 1, 1, 1, 0],
                 [0, 1, 1, 1, 1],
                 [0, 0, 0, 0, 0]], bool)


def test_mask_augmented_target_hand_values():
    target, regions = mask_augmented_targets([[(1, 1)]], MASK, sigma=1.0, alpha=0.1, kpt_radius=1.0)
    t, r = target[0], regions[0]
    expected = np.array([[0, E, 0.1, 0.1, 0],
                         [E, 1, E, 0.1, 0.1],
                         [0, E, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(t, expected, rtol=1e-6)
    # partition: 2 keypoint region (also off the mask), 1 mask only, 0 background
    np.testing.assert_array_equal(r, [[0, 2, 1, 1, 0], [2, 2, 2, 1, 1], [0, 2, 0, 0, 0]])


def test_gated_loss_hand_values():
    target, regions = mask_augmented_targets([[(1, 1)]], MASK, sigma=1.0, alpha=0.1, kpt_radius=1.0)
    t, r = torch.from_numpy(target)[None], torch.from_numpy(regions)[None]
    w = (1.0, 2.0, 10.0)  # background, mask, keypoint
    loss = gated_loss(torch.zeros_like(t), t, r, w)
    # keypoint pixels: one 1.0 and four e^-0.5, weight 10; mask-only pixels: four 0.1, weight 2; 15 pixels
    expected = ((10 * 1.0) ** 2 + 4 * (10 * E) ** 2 + 4 * (2 * 0.1) ** 2) / 15
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(gated_loss(t, t, r, w)) == 0.0
    bg_error = t.clone()
    bg_error[0, 0, 2, 4] = 0.5  # a background pixel: weight 1
    assert float(gated_loss(bg_error, t, r, w)) == pytest.approx(0.25 / 15)
    # the plain loss is the unweighted mean squared error
    assert float(heatmap_loss(torch.zeros_like(t), t)) == pytest.approx(
        (1 + 4 * E ** 2 + 4 * 0.01) / 15, rel=1e-6)


def test_decode_finds_subpixel_peaks_with_nms_and_a_limit():
    h = gaussian_heatmap([(12.3, 7.6)], 20, 30, sigma=2.0)
    (x, y, s), = decode_peaks(h, threshold=0.3, nms_radius=3, max_peaks=1)
    assert (x, y) == pytest.approx((12.3, 7.6), abs=0.15)
    assert s == pytest.approx(h[8, 12])
    two = np.maximum(gaussian_heatmap([(5, 5)], 20, 30, 2.0), 0.6 * gaussian_heatmap([(22, 12)], 20, 30, 2.0))
    assert decode_peaks(two, 0.3, 3, 1)[:, :2].round().tolist() == [[5, 5]]
    assert decode_peaks(two, 0.3, 3, None)[:, :2].round().tolist() == [[5, 5], [22, 12]]
    assert len(decode_peaks(two, 0.7, 3, None)) == 1  # the weaker peak is below the threshold
    close = np.maximum(gaussian_heatmap([(5, 5)], 20, 30, 1.0), 0.9 * gaussian_heatmap([(7, 5)], 20, 30, 1.0))
    assert len(decode_peaks(close, 0.3, 3, None)) == 1  # within the suppression radius
    assert len(decode_peaks(np.zeros((8, 8)), 0.3, 3, None)) == 0
    plateau = np.zeros((8, 8), np.float32)
    plateau[3, 3:5] = 1.0  # two equal neighbours: one peak
    assert len(decode_peaks(plateau, 0.3, 1, None)) == 1


def test_pixel_centre_mapping_between_image_and_heatmap():
    img, hm = (320, 240), (160, 120)
    assert to_heatmap([[0.5, 0.5]], img, hm).tolist() == [[0.0, 0.0]]
    pts = np.array([[17.25, 200.0], [0.0, 0.0], [319.0, 239.0]])
    np.testing.assert_allclose(to_image(to_heatmap(pts, img, hm), img, hm), pts)


def test_unet_keeps_only_the_encoder_stages_it_runs():
    """smp keeps ResNet18's layer3/layer4 at encoder depth 3 though they never
    run: dropped, the network computes the same and its checkpoints shrink
    from 11 M to under 1 M parameters."""
    import segmentation_models_pytorch as smp
    import torch

    from surgseg_core.methods.tools.model import _unet

    torch.manual_seed(0)
    full = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=9, classes=2, encoder_depth=3,
                    decoder_channels=[32, 16, 8]).eval()
    ours = _unet("resnet18", None, 9, 2, 3, [32, 16, 8]).eval()
    missing, unexpected = ours.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("encoder.layer3.", "encoder.layer4.")) for k in unexpected)
    x = torch.randn(2, 9, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), full(x))
    assert sum(p.numel() for p in ours.parameters()) < 1_000_000 < sum(p.numel() for p in full.parameters()) / 10
