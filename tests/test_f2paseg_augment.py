"""Instrument-overlay augmentation (paper sec. 2.3): exact pasting on tiny
hand-made clips, time order, field of view, hidden labels, which clips are
augmented and the class distribution before/after; then on synthetic
endonasal clips (rare classes, instrument masks)."""
from __future__ import annotations

import numpy as np
import pytest

from surgseg_core.errors import ConfigError, DatasetError
from surgseg_core.methods.f2paseg.augment import (
    AugmentedClip,
    InstrumentDonor,
    augment_rare_clips,
    class_distribution,
    contains_classes,
    format_distribution,
    synthetic_anatomy_clip,
)
from surgseg_core.methods.f2paseg.classes import PAS
from surgseg_core.methods.f2paseg.data import AnnotatedClip

H, W, T = 8, 10, 4


def _clip(name, labels, colour=50):
    """A clip of T flat grey frames and the given per-frame label maps."""
    return AnnotatedClip(name, T, lambda i: np.full((H, W, 3), colour + i, np.uint8), {i: None for i in range(T)},
                         PAS, (H, W), read_mask=lambda i: labels[i])


def _donor(n=6):
    frames = [np.full((H, W, 3), 200 + i, np.uint8) for i in range(n)]
    masks = []
    for i in range(n):
        m = np.zeros((H, W), bool)
        m[:, i: i + 2] = True  # a vertical instrument moving right, one column per frame
        masks.append(m)
    return InstrumentDonor.from_arrays("tools", frames, masks)


def _labels(with_ip=True):
    out = []
    for i in range(T):
        m = np.zeros((H, W), np.uint8)
        m[2:6, 1:9] = 1
        if with_ip:
            m[6:8, 2:5] = 3
        out.append(m)
    return out


def test_overlay_pastes_in_time_order_inside_the_fov_and_hides_labels():
    labels = _labels()
    target = _clip("case", labels)
    fov = np.zeros((H, W), bool)
    fov[1:7, :] = True  # rows 0 and 7 are outside the field of view
    aug = AugmentedClip(target, _donor(), donor_start=1, fov=fov)
    for t in range(T):
        j = t + 1  # donor frame start + t
        expect_pasted = np.zeros((H, W), bool)
        expect_pasted[1:7, j: j + 2] = True
        np.testing.assert_array_equal(aug.instrument_mask(t), expect_pasted)
        frame = aug.frame(t)
        assert (frame[expect_pasted] == 200 + j).all()  # donor pixels
        assert (frame[~expect_pasted] == 50 + t).all()  # target pixels elsewhere
        mask = aug.mask(t)
        assert (mask[expect_pasted] == 0).all()  # hidden under the instrument
        np.testing.assert_array_equal(mask[~expect_pasted], labels[t][~expect_pasted])
    # the original is unchanged
    np.testing.assert_array_equal(target.mask(0), labels[0])
    assert (target.frame(0) == 50).all()
    # hidden as IGNORE instead of background
    ign = AugmentedClip(target, _donor(), donor_start=1, fov=fov, hidden_label=255)
    assert (ign.mask(0)[ign.instrument_mask(0)] == 255).all()
    # past the donor's end nothing is pasted
    late = AugmentedClip(target, _donor(), donor_start=4, fov=None)
    assert late.donor_index(1) == 5 and late.donor_index(2) is None
    assert late.instrument_mask(2).sum() == 0 and late.instrument_mask(1).sum() == H * 2


def test_donor_and_option_errors():
    with pytest.raises(DatasetError, match="instrument mask is"):
        InstrumentDonor.from_arrays("d", [np.zeros((4, 4, 3), np.uint8)], [np.zeros((3, 4), bool)])[0]
    with pytest.raises(DatasetError, match="2 frames but 1 masks"):
        InstrumentDonor.from_arrays("d", [np.zeros((4, 4, 3))] * 2, [np.zeros((4, 4))])
    with pytest.raises(ConfigError, match="donor_start"):
        AugmentedClip(_clip("c", _labels()), _donor(), donor_start=6)
    with pytest.raises(ConfigError, match="at least one"):
        augment_rare_clips([_clip("c", _labels())], [])


def test_only_clips_with_rare_classes_are_augmented_and_distribution_changes():
    with_ip = _clip("ip", _labels(True))
    without = _clip("plain", _labels(False))
    assert contains_classes(with_ip, PAS.rare_ids) and not contains_classes(without, PAS.rare_ids)
    extra = augment_rare_clips([with_ip, without], [_donor()], fov=None, rng=np.random.default_rng(0))
    assert [c.target.name for c in extra] == ["ip"]
    before = class_distribution([with_ip, without])
    after = class_distribution([with_ip, without] + extra)
    assert before["frames"] == 2 * T and after["frames"] == 3 * T
    assert before["share"][3] == 0.5 and after["share"][3] == pytest.approx(2 / 3)
    assert after["share"][1] == 1.0
    # pixels hidden under the instruments are gone from the augmented copy's counts
    assert after["pixels"][1] < before["pixels"][1] * 3 / 2
    table = format_distribution(before, after, PAS)
    assert "IP" in table and "50.00%" in table and "66.67%" in table


def test_overlay_on_synthetic_endonasal_clips():
    target, _ = synthetic_anatomy_clip(seed=3, n_frames=6)
    _, donor = synthetic_anatomy_clip(seed=11, n_frames=8)
    aug = AugmentedClip(target, donor, donor_start=2, fov="auto")
    from surgseg_core.synth import generate_endoscopy_clip

    synth = generate_endoscopy_clip(3, 6, 96, 128)
    pasted_any = False
    for t in range(6):
        pasted = aug.instrument_mask(t)
        _, donor_inst = donor[t + 2]
        assert not (pasted & ~donor_inst).any()  # only donor instrument pixels
        fov = synth.frame(t).fov
        # inside the target's field of view (the estimated FOV may be a pixel
        # or two wider than the rendered circle at its blurred edge)
        assert (pasted & ~fov).sum() <= 0.02 * max(1, pasted.sum())
        assert (aug.mask(t)[pasted] == 0).all()
        pasted_any |= bool(pasted.any())
        np.testing.assert_array_equal(aug.frame(t)[~pasted], target.frame(t)[~pasted])
    assert pasted_any
    # the synthetic clips show the rare classes
    seen = set()
    for seed in range(4):
        clip, _ = synthetic_anatomy_clip(seed=seed, n_frames=4)
        seen |= {int(v) for _, m in clip.masks() for v in np.unique(m)}
    assert {3, 5} & seen


def test_synthetic_dataset_has_rare_classes_and_augmentation_raises_their_share():
    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_dataset

    clips, donors = synthetic_anatomy_dataset(4, rare_every=2, n_frames=3, height=64, width=80, seed=5)
    before = class_distribution(clips)
    assert 0 < before["share"][3] <= 0.5 and before["share"][5] <= 0.5  # rare: half the clips at most
    assert before["share"][1] == 1.0
    extra = augment_rare_clips(clips, donors[1:], rng=np.random.default_rng(0))
    assert len(extra) == 2 and {c.target.name for c in extra} == {"synth5", "synth7"}
    after = class_distribution(clips + extra)
    assert after["share"][3] > before["share"][3]
    assert after["frames"] == before["frames"] + 2 * 3
    print(format_distribution(before, after, PAS))


def test_absent_classes_leave_the_rest_of_the_synthetic_clip_unchanged():
    from surgseg_core.synth import generate_endoscopy_clip

    full = generate_endoscopy_clip(2, 2, 64, 80).frame(1)
    lacking = generate_endoscopy_clip(2, 2, 64, 80, absent_classes=(3, 5)).frame(1)
    assert not np.isin(lacking.anatomy, (3, 5)).any() and np.isin(full.anatomy, (3, 5)).any()
    keep = ~np.isin(full.anatomy, (3, 5))
    np.testing.assert_array_equal(full.anatomy[keep], lacking.anatomy[keep])
    with pytest.raises(ConfigError, match="absent_classes"):
        generate_endoscopy_clip(2, 2, 64, 80, absent_classes=(7,))


def test_synthetic_and_augmented_clips_written_in_the_pas_layout_read_back(tmp_path):
    from surgseg_core.methods.f2paseg.augment import synthetic_anatomy_dataset
    from surgseg_core.methods.f2paseg.data import read_pas, write_pas

    clips, donors = synthetic_anatomy_dataset(2, rare_every=2, n_frames=3, height=64, width=80, seed=1)
    extra = augment_rare_clips(clips, donors[1:], rng=np.random.default_rng(0))
    progress = []
    write_pas(clips + extra, tmp_path, "train", progress=lambda d, t, m="": progress.append((d, t)))
    assert progress[-1] == (9, 9)
    back = read_pas(tmp_path, "train")
    assert [c.name for c in back] == ["case_0000", "case_0001", "case_0002"]
    for src, got in zip(clips + extra, back):
        for i in range(3):
            np.testing.assert_array_equal(got.mask(i), src.mask(i))  # lossless masks
            assert np.abs(got.frame(i).astype(int) - src.frame(i)).mean() < 8  # JPEG frames
    assert class_distribution(back)["share"] == class_distribution(clips + extra)["share"]
    sparse = AnnotatedClip("s", 2, lambda i: np.zeros((4, 4, 3), np.uint8), {0: None}, PAS, (4, 4),
                           read_mask=lambda i: np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"needs a mask for every frame; none for frame\(s\) \[1\]"):
        write_pas([sparse], tmp_path / "x")
