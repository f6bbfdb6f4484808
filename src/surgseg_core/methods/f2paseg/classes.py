"""Class sets of F2PASeg and merging per-class logits into one label map.

Each class is one SAM2 object whose id is the class id (the label value).
The default set is the paper's PAS anatomy (index mask values 0-6); the
CholecSeg8k set is the second built-in one (its 13 classes, ids 0-12 after
mapping its mask values, see ``data.CHOLECSEG8K_MASK_IDS``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

from ...errors import ConfigError

IGNORE = 255  # index-mask value of unlabelled pixels (CholecSeg8k edges): no class, not background


@dataclass(frozen=True)
class AnatomyClass:
    id: int
    abbrev: str
    name: str
    colour: Tuple[int, int, int]  # RGB 0-255
    rare: bool = False  # the augmentation targets clips that contain rare classes


@dataclass(frozen=True)
class ClassSet:
    """Foreground classes (id >= 1; 0 is background) with display names and colours."""

    name: str
    classes: Tuple[AnatomyClass, ...]
    instrument_ids: Tuple[int, ...] = ()  # classes that are instruments (CholecSeg8k), not anatomy

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids) or any(i < 1 or i >= IGNORE for i in ids):
            raise ConfigError(f"class set {self.name!r}: class ids must be distinct and in 1..{IGNORE - 1}, got {ids}")

    @property
    def ids(self) -> Tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def rare_ids(self) -> Tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.rare)

    def by_id(self, class_id: int) -> AnatomyClass:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise ConfigError(f"class set {self.name!r} has no class {class_id}; classes: {self.describe()}")

    def names(self) -> Dict[int, str]:
        return {c.id: c.abbrev for c in self.classes}

    def colours(self) -> Dict[int, Tuple[int, int, int]]:
        return {c.id: c.colour for c in self.classes}

    def describe(self) -> str:
        return ", ".join(f"{c.id} {c.abbrev}" for c in self.classes)

    def check_mask(self, mask: np.ndarray, where: str = "mask") -> None:
        """DatasetError when ``mask`` holds a value that is not background,
        a class of this set or IGNORE."""
        from ...errors import DatasetError

        values = np.unique(np.asarray(mask))
        allowed = {0, IGNORE, *self.ids}
        unknown = [int(v) for v in values if int(v) not in allowed]
        if unknown:
            raise DatasetError(f"{where}: unknown class id(s) {unknown} for class set {self.name!r} "
                               f"(0 background, {self.describe()}, {IGNORE} unlabelled)")


PAS = ClassSet("pas", (
    AnatomyClass(1, "SF", "sella floor", (230, 25, 75)),
    AnatomyClass(2, "TS", "tuberculum sella", (60, 180, 75)),
    AnatomyClass(3, "IP", "ICA prominence", (255, 225, 25), rare=True),
    AnatomyClass(4, "CR", "clival recess", (0, 130, 200)),
    AnatomyClass(5, "OCR", "optic-carotid recess", (245, 130, 48), rare=True),
    AnatomyClass(6, "OP", "optic prominence", (145, 30, 180)),
))
# The paper augments clips with IP and OCR ("the cases containing ICA and
# OCR"); OP is also scarce (Fig. 4) but is not named for augmentation.

# CholecSeg8k's 13 classes (Hong et al. 2020) with its colour-mask colours;
# class 0 "black background" is our background.
CHOLECSEG8K = ClassSet("cholecseg8k", (
    AnatomyClass(1, "AW", "abdominal wall", (210, 140, 140)),
    AnatomyClass(2, "LV", "liver", (255, 114, 114)),
    AnatomyClass(3, "GI", "gastrointestinal tract", (231, 70, 156)),
    AnatomyClass(4, "FAT", "fat", (186, 183, 75)),
    AnatomyClass(5, "GR", "grasper", (170, 255, 0)),
    AnatomyClass(6, "CT", "connective tissue", (255, 85, 0)),
    AnatomyClass(7, "BL", "blood", (255, 0, 0), rare=True),
    AnatomyClass(8, "CD", "cystic duct", (255, 255, 0), rare=True),
    AnatomyClass(9, "LH", "L-hook electrocautery", (169, 255, 184)),
    AnatomyClass(10, "GB", "gallbladder", (255, 160, 165)),
    AnatomyClass(11, "HV", "hepatic vein", (0, 50, 128), rare=True),
    AnatomyClass(12, "LL", "liver ligament", (111, 74, 0), rare=True),
), instrument_ids=(5, 9))

CLASS_SETS: Dict[str, ClassSet] = {PAS.name: PAS, CHOLECSEG8K.name: CHOLECSEG8K}


def get_class_set(spec: Union[str, ClassSet, Sequence[Mapping]]) -> ClassSet:
    """A built-in set by name, a ClassSet, or a list of ``{"id", "abbrev",
    "name", "colour", "rare"}`` mappings (a config's custom set)."""
    if isinstance(spec, ClassSet):
        return spec
    if isinstance(spec, str):
        if spec not in CLASS_SETS:
            raise ConfigError(f"unknown class set {spec!r}; built in: {', '.join(CLASS_SETS)} "
                              "(or give a list of classes)")
        return CLASS_SETS[spec]
    try:
        classes = tuple(AnatomyClass(int(c["id"]), str(c.get("abbrev", c["name"])), str(c["name"]),
                                     tuple(int(v) for v in c.get("colour", (255, 255, 255))),
                                     bool(c.get("rare", False))) for c in spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"a custom class set is a list of {{id, name[, abbrev, colour, rare]}}: {exc}") from None
    return ClassSet("custom", classes)


def merge_class_logits(logits, class_ids: Iterable[int], threshold: float = 0.0) -> np.ndarray:
    """One label map from per-class logits (n_classes, ..., H, W): each pixel
    gets the class with the highest logit among those above ``threshold``,
    background (0) where none is (numpy arrays or torch tensors). The
    engine's ``FrameResult.label_map`` is the same merge."""
    from ...sam2_engine.outputs import merge_object_logits

    ids = list(class_ids)
    if len(logits) != len(ids):
        raise ConfigError(f"{len(logits)} logit maps for {len(ids)} class ids")
    return merge_object_logits(logits, ids, threshold)
