"""Video clips with per-frame index masks (one object per id) for SAM2 training.

A dataset root may hold any mix of these sequences (searched recursively):

* a synthetic clip (``python -m surgseg_core.synth clip``): ``video.mp4`` and
  ``instruments/<frame>.png`` (``meta.json`` kind ``endoscopy_clip``);
* a video or frame folder with masks: ``<name>.mp4`` (or ``frames/``) next
  to ``masks/<frame>.png``, one mask per frame in frame order;
* what "Corrections -> dataset" exports: ``images/<video>_f<frame>.png`` and
  ``masks/<same stem>.png``; the frames of one video, in frame order, form
  one sequence.

Frames are read lazily (``open_video`` / PIL), only the ``clip_len`` frames
of one training item at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ...errors import DatasetError
from ...io.open import VIDEO_SUFFIXES as _VIDEO_FILES

VIDEO_SUFFIXES = tuple(sorted(_VIDEO_FILES)) + (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_STEM_FRAME = re.compile(r"^(?P<video>.*)_f(?P<frame>\d+)$")


@dataclass
class Sequence_:
    """One video: a frame reader and its mask files (same order and length)."""

    name: str
    frames: Union[Path, List[Path]]  # a video/frame folder for open_video, or image files
    masks: List[Path]

    def __len__(self) -> int:
        return len(self.masks)


def _natural(p: Path):
    from ...io.frame_folder import natural_key

    return natural_key(p.name)


def _images(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural)


def _sequences_in(folder: Path) -> List[Sequence_]:
    """Sequences stored directly in ``folder`` (not its subfolders)."""
    out: List[Sequence_] = []
    masks_dir = folder / "masks"
    if (folder / "video.mp4").is_file() and (folder / "instruments").is_dir():
        out.append(Sequence_(folder.name, folder / "video.mp4", _images(folder / "instruments")))
    elif (folder / "images").is_dir() and masks_dir.is_dir():  # corrections export
        masks = {p.stem: p for p in _images(masks_dir)}
        groups: Dict[str, List[tuple]] = {}
        for img in _images(folder / "images"):
            if img.stem not in masks:
                raise DatasetError(f"{img} has no mask {masks_dir / (img.stem + '.png')}")
            m = _STEM_FRAME.match(img.stem)
            video, frame = (m.group("video"), int(m.group("frame"))) if m else ("frames", len(groups.get("frames", [])))
            groups.setdefault(video, []).append((frame, img, masks[img.stem]))
        for video, items in sorted(groups.items()):
            items.sort(key=lambda x: x[0])
            out.append(Sequence_(f"{folder.name}/{video}", [i[1] for i in items], [i[2] for i in items]))
    elif masks_dir.is_dir():
        videos = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
        source: Optional[Path] = videos[0] if len(videos) == 1 else None
        if source is None and (folder / "frames").is_dir():
            source = folder / "frames"
        if source is None:
            raise DatasetError(f"{folder} has masks/ but no single video file or frames/ folder next to it "
                               f"(found {len(videos)} videos)")
        out.append(Sequence_(folder.name, source, _images(masks_dir)))
    return out


def find_sequences(root: Union[str, Path]) -> List[Sequence_]:
    """All sequences under ``root`` (see the module docstring), sorted by path."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"SAM2 dataset folder not found: {root}")
    folders = [root] + sorted(p for p in root.rglob("*") if p.is_dir() and p.name not in ("masks", "images",
                                                                                         "instruments", "anatomy",
                                                                                         "frames"))
    seqs = [s for f in folders for s in _sequences_in(f)]
    seqs = [s for s in seqs if len(s)]
    if not seqs:
        raise DatasetError(
            f"no video sequences with masks found under {root}: expected synthetic clips (video.mp4 + instruments/), "
            "a video or frames/ next to masks/, or a corrections export (images/ + masks/)"
        )
    return seqs


class _Reader:
    """Frame access for one sequence, opened on first use."""

    def __init__(self, seq: Sequence_) -> None:
        self.seq = seq
        self.src = None

    def frame(self, i: int) -> np.ndarray:
        if isinstance(self.seq.frames, list):
            return np.asarray(Image.open(self.seq.frames[i]).convert("RGB"))
        if self.src is None:
            from ...io import open_video

            self.src = open_video(self.seq.frames, cache_mb=32)
            if len(self.src) < len(self.seq.masks):
                raise DatasetError(f"{self.seq.frames}: {len(self.src)} frames but {len(self.seq.masks)} masks")
        return np.asarray(self.src[i])

    def mask(self, i: int) -> np.ndarray:
        return np.asarray(Image.open(self.seq.masks[i]))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST))


class VideoClipDataset(torch.utils.data.Dataset):
    """Training items of ``clip_len`` frames with up to ``max_objects`` objects.

    One item per (sequence, start frame) with starts ``clip_len // 2`` apart
    (more with ``samples_per_sequence``). Training items draw a random start
    and frame stride (1..``max_stride``) and a random subset of the objects
    present on their first frame (SAM2's rule: objects are tracked from the
    frame they are prompted on); evaluation items are deterministic.
    ``hard_windows`` (0..1, training only, default 0: off): the share of items
    whose start is drawn among the "hard" windows, those whose first frame
    shows at least two objects or in which an object of the first frame
    leaves while another object is in view (the cases where only the prompt
    and the memory tell the objects apart); where a sequence has none, the
    usual draw applies. ``enter_windows`` (0..1, training only, default 0):
    the share drawn among "entering" windows, whose first frame shows an
    object at most a quarter of the area it has on the window's last frame
    (an instrument coming into view, prompted while it is a sliver: a model
    trained mostly on leaving instruments learns to drop such slivers).
    ``small_windows`` (0..1, training only, default 0): the share drawn among
    windows whose first frame shows an object of at most ``small_area``
    pixels (at the model's resolution; default 64): the prompted frame's
    own mask of a sliver (a model that never segmented one returns an empty
    mask for a box on it, with a high object score, and then tracks nothing).
    ``hflip`` (probability), ``affine_degrees`` and ``affine_shear`` (training
    only, default 0: off): SAM2.1's geometric augmentation (its fine-tuning
    recipe: flip 0.5, rotation within +-25 degrees, shear within +-20), the
    same draw for every frame of a clip, applied with torchvision's ``hflip``
    / ``affine`` to the resized frames (filled with SAM2's normalisation mean,
    as SAM2 fills with the image mean) and masks (nearest). The parameters come
    from the item's seeded generator (SAM2's transforms draw from the global
    ``random`` state, which a resumed run cannot replay); as in SAM2, a draw
    that removes an object from the prompted first frame is not applied.
    Item: ``images`` [T, 3, S, S] (SAM2-normalised), ``masks`` [T, O, S, S] uint8.
    """

    def __init__(self, sequences: Sequence[Sequence_], *, image_size: int, clip_len: int = 8,
                 max_objects: int = 3, train: bool = True, max_stride: int = 1, seed: int = 0,
                 min_area: int = 4, hard_windows: float = 0.0, enter_windows: float = 0.0,
                 small_windows: float = 0.0, small_area: int = 64, hflip: float = 0.0,
                 affine_degrees: float = 0.0, affine_shear: float = 0.0) -> None:
        if not 0.0 <= float(hflip) <= 1.0:
            raise DatasetError(f"hflip is a probability within 0..1, got {hflip}")
        if float(affine_degrees) < 0 or float(affine_shear) < 0:
            raise DatasetError(f"affine_degrees and affine_shear must be >= 0, got {affine_degrees} and {affine_shear}")
        self.hflip, self.affine_degrees, self.affine_shear = float(hflip), float(affine_degrees), float(affine_shear)
        self.sequences = list(sequences)
        self.size = int(image_size)
        self.clip_len = int(clip_len)
        self.max_objects = int(max_objects)
        self.train = bool(train)
        self.max_stride = max(1, int(max_stride))
        self.seed = int(seed)
        self.min_area = int(min_area)
        self.hard_windows = float(hard_windows)
        self.enter_windows = float(enter_windows)
        self.small_windows, self.small_area = float(small_windows), int(small_area)
        shares = {"hard_windows": self.hard_windows, "enter_windows": self.enter_windows,
                  "small_windows": self.small_windows}
        out_of_range = any(not 0.0 <= v <= 1.0 for v in shares.values())
        if out_of_range or sum(shares.values()) > 1.0 + 1e-9:  # 0.7 + 0.2 + 0.1 may sum to 1.0000000000000002
            raise DatasetError(f"hard_windows, enter_windows and small_windows must each be within 0..1 and sum to at "
                               f"most 1, got {', '.join(f'{k} {v}' for k, v in shares.items())}")
        self.epoch = 0
        self._areas: Dict[int, List[Dict[int, int]]] = {}  # sequence -> {object: pixels} per frame (windows)
        self.readers = [_Reader(s) for s in self.sequences]
        self.index = []
        step = max(1, self.clip_len // 2)
        for k, seq in enumerate(self.sequences):
            n = len(seq)
            for start in range(0, max(1, n - self.clip_len + 1), step):
                self.index.append((k, start))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _object_areas(self, mask: np.ndarray) -> Dict[int, int]:
        ids, counts = np.unique(mask, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts) if i and c >= self.min_area}

    def _objects(self, mask: np.ndarray) -> List[int]:
        return list(self._object_areas(mask))

    def _areas_per_frame(self, k: int) -> List[Dict[int, int]]:
        if k not in self._areas:
            reader = self.readers[k]
            self._areas[k] = [self._object_areas(_resize_mask(reader.mask(t), self.size))
                              for t in range(len(self.sequences[k]))]
        return self._areas[k]

    def hard_starts(self, k: int, stride: int) -> List[int]:
        """Starts of sequence ``k`` (frame step ``stride``) whose first frame
        shows >= 2 objects, or in whose clip an object of the first frame is
        gone while another object is in view."""
        present = [a.keys() for a in self._areas_per_frame(k)]  # key views: set operations, no copies
        n = len(present)
        span = (self.clip_len - 1) * stride + 1
        out = []
        for s in range(max(1, n - span + 1)):
            first = present[s]
            if not first:
                continue
            frames = [present[min(s + i * stride, n - 1)] for i in range(1, self.clip_len)]
            if len(first) >= 2 or any((first - f) and f for f in frames):
                out.append(s)
        return out

    def enter_starts(self, k: int, stride: int) -> List[int]:
        """Starts of sequence ``k`` (frame step ``stride``) whose first frame
        shows an object with at most a quarter of its area on the window's
        last frame (it is coming into view)."""
        areas = self._areas_per_frame(k)
        n = len(areas)
        span = (self.clip_len - 1) * stride + 1
        out = []
        for s in range(max(1, n - span + 1)):
            last = areas[min(s + span - 1, n - 1)]
            if any(4 * a <= last.get(o, 0) for o, a in areas[s].items()):
                out.append(s)
        return out

    def small_starts(self, k: int, stride: int) -> List[int]:
        """Starts of sequence ``k`` (frame step ``stride``) whose first frame
        shows an object of at most ``small_area`` pixels."""
        areas = self._areas_per_frame(k)
        span = (self.clip_len - 1) * stride + 1
        return [s for s in range(max(1, len(areas) - span + 1))
                if any(a <= self.small_area for a in areas[s].values())]

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        from ...sam2_engine.engine import preprocess_frame

        k, start = self.index[idx]
        reader, n = self.readers[k], len(self.sequences[k])
        rng = np.random.default_rng([self.seed, self.epoch, idx]) if self.train else None
        stride = int(rng.integers(1, self.max_stride + 1)) if rng is not None else 1
        span = (self.clip_len - 1) * stride + 1
        if span > n:
            stride, span = 1, min(self.clip_len, n)
        if rng is not None:
            starts = list(rng.permutation(max(1, n - span + 1))[:8]) + [start]
            if self.hard_windows > 0 or self.enter_windows > 0 or self.small_windows > 0:
                u = rng.random()
                e, h = self.enter_windows, self.enter_windows + self.hard_windows
                special = (self.enter_starts(k, stride) if u < e else self.hard_starts(k, stride) if u < h else
                           self.small_starts(k, stride) if u < h + self.small_windows else [])
                if special:
                    starts = [int(rng.choice(special))] + starts
        else:  # evaluation: deterministic, the first start at or after this one that shows an object
            starts = [start] + list(range(start + 1, max(1, n - span + 1))) + list(range(0, start))
        first = None
        for s in starts:  # a start whose first frame shows an object
            s = int(min(s, max(0, n - span)))
            first = _resize_mask(reader.mask(s), self.size)
            if self._objects(first):
                start = s
                break
        ids = self._objects(first)
        if not ids:
            raise DatasetError(f"{self.sequences[k].name}: no object on any tried first frame (frame {start})")
        if rng is not None:
            rng.shuffle(ids)
        ids = sorted(ids[: self.max_objects])
        frames = [min(start + i * stride, n - 1) for i in range(self.clip_len)]
        images = torch.stack([preprocess_frame(reader.frame(t), self.size) for t in frames])
        masks = np.stack([_resize_mask(reader.mask(t), self.size) for t in frames])
        obj = torch.from_numpy(np.stack([masks == i for i in ids], axis=1).astype(np.uint8))
        if rng is not None and (self.hflip > 0 or self.affine_degrees > 0 or self.affine_shear > 0):
            images, obj = self._geometric(images, obj, rng)
        return {"images": images, "masks": obj, "object_ids": torch.tensor(ids), "sequence": k,
                "frames": torch.tensor(frames)}

    def _geometric(self, images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
        """The clip's flip and affine draw (see the class docstring); the
        draws are made whether or not they apply, so switching one
        augmentation off does not change the others' draws."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        flip = rng.random() < self.hflip
        angle = float(rng.uniform(-self.affine_degrees, self.affine_degrees))
        shear = float(rng.uniform(-self.affine_shear, self.affine_shear))
        if flip:
            images, masks = TF.hflip(images), TF.hflip(masks)
        if self.affine_degrees > 0 or self.affine_shear > 0:
            moved = TF.affine(masks, angle=angle, translate=[0, 0], scale=1.0, shear=[shear, 0.0],
                              interpolation=InterpolationMode.NEAREST, fill=0.0)
            if bool((moved[0].flatten(1).amax(1) > 0).all()):  # every object still on the prompted frame
                images = TF.affine(images, angle=angle, translate=[0, 0], scale=1.0, shear=[shear, 0.0],
                                   interpolation=InterpolationMode.BILINEAR, fill=0.0)  # 0 = the mean, normalised
                masks = moved
        return images, masks


def collate_clips(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack the clips and concatenate their objects (SAM2's batched layout):
    ``images`` [B, T, 3, S, S], ``masks`` [T, O, S, S], ``obj_video`` [O]."""
    lens = {int(it["images"].shape[0]) for it in items}
    if len(lens) != 1:
        raise DatasetError(f"clips of different lengths in one batch: {sorted(lens)}")
    return {
        "images": torch.stack([it["images"] for it in items]),
        "masks": torch.cat([it["masks"] for it in items], dim=1),
        "obj_video": torch.cat([torch.full((it["masks"].shape[1],), b, dtype=torch.long)
                                for b, it in enumerate(items)]),
    }
