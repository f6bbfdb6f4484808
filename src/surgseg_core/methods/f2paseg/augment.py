"""Instrument-overlay augmentation (F2PASeg paper sec. 2.3, Fig. 3).

Clips that contain the rare classes (PAS: IP and OCR) get copies in which
surgical instruments cut from other clips (with their instrument masks) are
pasted over the frames in time order: donor frame ``donor_start + t`` onto
target frame ``t``, so the instruments move as they did in their own video.
Pixels are pasted only inside the target frame's endoscope field of view,
and the anatomy labels under a pasted instrument become hidden
(``hidden_label``: background by default, since an occluded structure is
not visible; IGNORE leaves them out of losses instead).

Everything is lazy: an ``AugmentedClip`` composes frame ``t`` when asked.

    donors = [InstrumentDonor.from_clip(c, instrument_ids=(5, 9)) for c in instrument_clips]
    extra = augment_rare_clips(pas_clips, donors)            # new clips, originals untouched
    print(format_distribution(class_distribution(pas_clips),
                              class_distribution(pas_clips + extra), PAS))
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import ConfigError, DatasetError
from .classes import ClassSet
from .data import AnnotatedClip


class InstrumentDonor:
    """Frames with instrument masks, in time order: ``donor[i] -> (rgb
    (H, W, 3) uint8, instrument mask (H, W) bool)``, read lazily."""

    def __init__(self, name: str, num_frames: int, read: Callable[[int], Tuple[np.ndarray, np.ndarray]]) -> None:
        self.name = name
        self.num_frames = int(num_frames)
        self._read = read

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.num_frames:
            raise DatasetError(f"instrument donor {self.name!r}: frame {i} is outside 0..{self.num_frames - 1}")
        rgb, mask = self._read(int(i))
        rgb, mask = np.asarray(rgb), np.asarray(mask).astype(bool)
        if rgb.shape[:2] != mask.shape:
            raise DatasetError(f"instrument donor {self.name!r}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]} but its "
                               f"instrument mask is {mask.shape[1]}x{mask.shape[0]}")
        return rgb, mask

    @classmethod
    def from_clip(cls, clip: AnnotatedClip, instrument_ids: Iterable[int]) -> "InstrumentDonor":
        """Instruments of an annotated clip whose masks label them (e.g.
        CholecSeg8k's grasper and L-hook, ids 5 and 9); its annotated frames
        in order."""
        ids = np.array(sorted(set(int(i) for i in instrument_ids)))
        if ids.size == 0:
            raise ConfigError("give the class ids of the instruments")
        frames = clip.annotated
        return cls(clip.name, len(frames), lambda i: (clip.frame(frames[i]), np.isin(clip.mask(frames[i]), ids)))

    @classmethod
    def from_arrays(cls, name: str, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> "InstrumentDonor":
        if len(frames) != len(masks):
            raise DatasetError(f"instrument donor {name!r}: {len(frames)} frames but {len(masks)} masks")
        return cls(name, len(frames), lambda i: (frames[i], masks[i]))


def _resize(arr: np.ndarray, size: Tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == tuple(size):
        return arr
    from PIL import Image

    img = Image.fromarray(arr.astype(np.uint8) if not nearest else arr.astype(np.uint8) * 255)
    out = np.asarray(img.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))
    return out > 127 if nearest else out


FovSpec = Union[str, None, np.ndarray, Callable[[np.ndarray], np.ndarray]]


class AugmentedClip(AnnotatedClip):
    """A target clip with a donor's instruments pasted over it (see module doc)."""

    def __init__(self, target: AnnotatedClip, donor: InstrumentDonor, *, donor_start: int = 0,
                 hidden_label: int = 0, fov: FovSpec = "auto") -> None:
        super().__init__(f"{target.name}+{donor.name}", len(target), target.frame, target.mask_files,
                         target.class_set, target.size, read_mask=target.mask)
        if not 0 <= donor_start < len(donor):
            raise ConfigError(f"donor_start {donor_start} is outside the donor's 0..{len(donor) - 1}")
        self.target, self.donor, self.donor_start = target, donor, int(donor_start)
        self.hidden_label = int(hidden_label)
        self.fov = fov
        self._last: Optional[Tuple[int, np.ndarray, np.ndarray]] = None  # frame, image, pasted mask

    def donor_index(self, t: int) -> Optional[int]:
        """The donor frame pasted onto frame ``t`` (None past the donor's end)."""
        j = self.donor_start + t
        return j if j < len(self.donor) else None

    def _fov_mask(self, image: np.ndarray) -> np.ndarray:
        if self.fov is None:
            return np.ones(image.shape[:2], bool)
        if isinstance(self.fov, str):
            if self.fov != "auto":
                raise ConfigError(f"fov must be 'auto', None, a mask or a function, got {self.fov!r}")
            from ..liver.postprocess import estimate_fov

            return estimate_fov(image)
        if callable(self.fov):
            return np.asarray(self.fov(image), bool)
        fov = np.asarray(self.fov, bool)
        if fov.shape != image.shape[:2]:
            raise ConfigError(f"fov mask is {fov.shape[1]}x{fov.shape[0]}, frames are {image.shape[1]}x{image.shape[0]}")
        return fov

    def _compose(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        if self._last is not None and self._last[0] == t:
            return self._last[1], self._last[2]
        image = self.target.frame(t).copy()
        j = self.donor_index(t)
        pasted = np.zeros(image.shape[:2], bool)
        if j is not None:
            rgb, inst = self.donor[j]
            from ...io.pixels import frame_to_rgb8

            rgb = _resize(frame_to_rgb8(rgb, f"donor {self.donor.name!r} frame {j}"), image.shape[:2], nearest=False)
            inst = _resize(inst, image.shape[:2], nearest=True)
            pasted = inst & self._fov_mask(image)
            image[pasted] = rgb[pasted]
        self._last = (t, image, pasted)
        return image, pasted

    def frame(self, i: int) -> np.ndarray:
        return self._compose(self._check_index(int(i)))[0].copy()

    def instrument_mask(self, i: int) -> np.ndarray:
        """Where instrument pixels were pasted on frame ``i``."""
        return self._compose(self._check_index(int(i)))[1].copy()

    def mask(self, i: int) -> Optional[np.ndarray]:
        mask = self.target.mask(i)
        if mask is None:
            return None
        mask = mask.copy()
        mask[self._compose(int(i))[1]] = self.hidden_label
        return mask


def contains_classes(clip: AnnotatedClip, class_ids: Iterable[int]) -> bool:
    """True if any annotated frame of ``clip`` shows one of ``class_ids``."""
    ids = np.array(list(class_ids))
    return any(np.isin(mask, ids).any() for _, mask in clip.masks())


def augment_rare_clips(clips: Sequence[AnnotatedClip], donors: Sequence[InstrumentDonor], *,
                       rare_ids: Optional[Iterable[int]] = None, hidden_label: int = 0, fov: FovSpec = "auto",
                       rng: Optional[np.random.Generator] = None) -> List[AugmentedClip]:
    """One augmented copy of every clip containing a rare class (default: its
    class set's rare classes, PAS: IP and OCR), each with the instruments of
    a donor (taken in turn) from a random start frame. The originals are
    unchanged; add the result to the training set."""
    if not donors:
        raise ConfigError("instrument overlay needs at least one instrument donor clip")
    rng = rng if rng is not None else np.random.default_rng()
    out = []
    for clip in clips:
        ids = tuple(rare_ids) if rare_ids is not None else clip.class_set.rare_ids
        if not ids or not contains_classes(clip, ids):
            continue
        donor = donors[len(out) % len(donors)]
        start = int(rng.integers(0, max(1, len(donor) - len(clip) + 1)))
        out.append(AugmentedClip(clip, donor, donor_start=start, hidden_label=hidden_label, fov=fov))
    return out


def class_distribution(clips: Sequence[AnnotatedClip], class_set: Optional[ClassSet] = None) -> Dict[str, object]:
    """As the paper's Fig. 4: per class the share of annotated frames that
    show it, plus its pixel count; ``"frames"`` the number of frames."""
    cs = class_set or clips[0].class_set
    frames = 0
    present = {c: 0 for c in cs.ids}
    pixels = {c: 0 for c in cs.ids}
    for clip in clips:
        for _, mask in clip.masks():
            frames += 1
            values, counts = np.unique(mask, return_counts=True)
            for v, n in zip(values.tolist(), counts.tolist()):
                if v in present:
                    present[v] += 1
                    pixels[v] += n
    return {"frames": frames, "share": {c: present[c] / frames if frames else 0.0 for c in cs.ids},
            "pixels": pixels}


def format_distribution(before: Dict[str, object], after: Dict[str, object], class_set: ClassSet) -> str:
    """The class distribution before and after augmentation as a text table."""
    lines = [f"{'class':<6} {'frames before':>14} {'frames after':>13}   (of {before['frames']} / {after['frames']} frames)"]
    for c in class_set.classes:
        lines.append(f"{c.abbrev:<6} {100 * before['share'][c.id]:13.2f}% {100 * after['share'][c.id]:12.2f}%")
    return "\n".join(lines)


def synthetic_anatomy_clip(seed: int = 0, n_frames: int = 20, height: int = 96, width: int = 128,
                           class_set: Optional[ClassSet] = None, absent_classes: Tuple[int, ...] = (),
                           ) -> Tuple[AnnotatedClip, InstrumentDonor]:
    """A synthetic endonasal clip (``surgseg_core.synth``: the six PAS
    classes but ``absent_classes``, instruments with masks) as an annotated
    clip (anatomy labels) and as an instrument donor, both lazy."""
    from ...synth import generate_endoscopy_clip
    from .classes import PAS

    synth = generate_endoscopy_clip(seed, n_frames, height, width, absent_classes=absent_classes)
    clip = AnnotatedClip(f"synth{seed}", n_frames, lambda i: synth.frame(i).image,
                         {i: None for i in range(n_frames)}, class_set or PAS, (height, width),
                         read_mask=lambda i: synth.frame(i).anatomy)

    def instruments(i: int) -> Tuple[np.ndarray, np.ndarray]:
        f = synth.frame(i)
        return f.image, f.instruments > 0

    return clip, InstrumentDonor(f"synth{seed}-instruments", n_frames, instruments)


def synthetic_anatomy_dataset(n_clips: int = 10, *, rare_every: int = 4, n_frames: int = 20, height: int = 96,
                              width: int = 128, seed: int = 0) -> Tuple[List[AnnotatedClip], List[InstrumentDonor]]:
    """Synthetic PAS-like training clips in which the rare classes are rare,
    as in the paper's Fig. 4: only every ``rare_every``-th clip (patient)
    shows IP and OCR, the others lack them. Returns (clips, instrument donors
    made from the same clips' instruments)."""
    if n_clips < 1 or rare_every < 1:
        raise ConfigError(f"n_clips and rare_every must be >= 1, got {n_clips}, {rare_every}")
    from .classes import PAS

    clips, donors = [], []
    for k in range(n_clips):
        absent = () if k % rare_every == 0 else PAS.rare_ids
        clip, donor = synthetic_anatomy_clip(seed + k, n_frames, height, width, absent_classes=absent)
        clips.append(clip)
        donors.append(donor)
    return clips, donors
