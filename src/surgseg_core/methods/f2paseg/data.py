"""F2PASeg's data: annotated clips from three layouts, read lazily, and
box prompts derived from their masks.

Layouts:
  * PAS (the paper's dataset): ``root/{split}/image/case_XXXX/{0.jpg, 1.jpg, ...}``
    and ``root/{split}/mask/case_XXXX/{0.png, ...}``, single-channel index
    masks (0 background, 1..6 the PAS classes). Every frame needs its mask.
  * generic: a video file or a frame folder, plus a folder of per-frame
    index masks (PNG). In a frame folder a mask has the frame's stem; for a
    video the last number in the mask's name is the frame index. A
    corrections export (``images/<video>_f000012.png`` + ``masks/...``) is a
    frame folder whose stems name several videos: it gives one clip per
    video. Masks may be sparse (annotated frames only).
  * CholecSeg8k: a clip folder of ``frame_N_endo.png`` with 3-channel id
    masks (R = G = B) mapped to the 13 classes by ``CHOLECSEG8K_MASK_IDS``.
    The ``_endo_watershed_mask.png`` masks are the complete ones (the
    dataset's training masks; 255 marks unlabelled region edges, read as
    IGNORE); in the copies we have, ``_endo_mask.png`` holds the ids only on
    region outlines with 0 inside, which is refused as an unknown id.

Frames and masks are read when asked for (``clip.frame(i)``, ``clip.mask(i)``,
``clip.frames`` for the streaming engine); only file names and image
headers are read up front. Bad input raises DatasetError naming the file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...datasets.boxes import mask_box
from ...errors import DatasetError, VideoError
from .classes import CHOLECSEG8K, IGNORE, PAS, ClassSet, get_class_set

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# CholecSeg8k mask value -> class id (its 13 classes; 50 is "black background")
CHOLECSEG8K_MASK_IDS: Dict[int, int] = {50: 0, 11: 1, 21: 2, 13: 3, 12: 4, 31: 5, 23: 6, 24: 7, 25: 8, 32: 9,
                                        22: 10, 33: 11, 5: 12, 255: IGNORE}
_NUMBER = re.compile(r"(\d+)")
_EXPORT_STEM = re.compile(r"^(.*)_f(\d+)$")


def _last_number(name: str) -> Optional[int]:
    nums = _NUMBER.findall(name)
    return int(nums[-1]) if nums else None


def _image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # header only
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc})") from None


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc})") from None


class _LazyFrames:
    """``len()`` + ``[i]`` view of a clip's frames (what StreamingSAM2 takes)."""

    def __init__(self, clip: "AnnotatedClip") -> None:
        self._clip = clip

    def __len__(self) -> int:
        return len(self._clip)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._clip.frame(int(i))


class AnnotatedClip:
    """One clip: frames (RGB uint8) and index masks (class ids, IGNORE for
    unlabelled pixels) for the annotated frames, read on demand.

    ``read_frame(i)``: the i-th frame; ``mask_files``: frame index -> mask
    file; ``decode_mask(array, path)``: file contents -> index mask."""

    def __init__(self, name: str, num_frames: int, read_frame: Callable[[int], np.ndarray],
                 mask_files: Mapping[int, Path], class_set: ClassSet, size: Tuple[int, int],
                 decode_mask: Optional[Callable[[np.ndarray, Path], np.ndarray]] = None,
                 read_mask: Optional[Callable[[int], np.ndarray]] = None) -> None:
        self.name = name
        self.num_frames = int(num_frames)
        self._read_frame = read_frame
        self.mask_files: Dict[int, Optional[Path]] = dict(sorted(mask_files.items()))
        self.class_set = class_set
        self.size = (int(size[0]), int(size[1]))  # (H, W)
        self._decode = decode_mask or _decode_index_mask
        self._read_mask = read_mask  # masks made in memory (synthetic clips): mask_files values are None

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"AnnotatedClip({self.name!r}, {self.num_frames} frames, {len(self.mask_files)} masks, "
                f"{self.size[1]}x{self.size[0]}, classes {self.class_set.name!r})")

    @property
    def frames(self) -> _LazyFrames:
        return _LazyFrames(self)

    @property
    def annotated(self) -> List[int]:
        return list(self.mask_files)

    def _check_index(self, i: int) -> int:
        if not 0 <= i < self.num_frames:
            raise DatasetError(f"clip {self.name!r}: frame {i} is outside 0..{self.num_frames - 1}")
        return i

    def frame(self, i: int) -> np.ndarray:
        from ...io.pixels import frame_to_rgb8

        i = self._check_index(int(i))
        try:
            img = frame_to_rgb8(self._read_frame(i), f"clip {self.name!r} frame {i}")
        except VideoError as exc:
            raise DatasetError(str(exc)) from None
        if img.shape[:2] != self.size:
            raise DatasetError(f"clip {self.name!r}: frame {i} is {img.shape[1]}x{img.shape[0]}, the clip's frames "
                               f"are {self.size[1]}x{self.size[0]}")
        return img

    def mask(self, i: int) -> Optional[np.ndarray]:
        """(H, W) uint8 index mask of frame ``i``; None if it is not annotated."""
        i = self._check_index(int(i))
        if i not in self.mask_files:
            return None
        path = self.mask_files[i]
        if self._read_mask is not None:
            mask, where = np.asarray(self._read_mask(i)), f"clip {self.name!r} frame {i} mask"
        else:
            mask, where = self._decode(_read_image(path), path), str(path)
        if mask.shape != self.size:
            raise DatasetError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but frame {i} of clip "
                               f"{self.name!r} is {self.size[1]}x{self.size[0]}")
        self.class_set.check_mask(mask, where)
        return mask

    def masks(self) -> Iterator[Tuple[int, np.ndarray]]:
        """(frame index, mask) of the annotated frames, one at a time."""
        for i in self.mask_files:
            yield i, self.mask(i)


def _decode_index_mask(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., 0]  # grey stored as RGB
        else:
            raise DatasetError(f"{path}: expected a single-channel index mask, got {arr.shape[2]} channels "
                               "with different values (a colour mask?)")
    if arr.dtype.kind not in "ui" or arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise DatasetError(f"{path}: index mask values must be integers 0..255, got {arr.dtype}")
    return arr.astype(np.uint8)


def _check_sizes(name: str, frame_size: Tuple[int, int], mask_files: Mapping[int, Path]) -> None:
    for i, path in mask_files.items():
        size = _image_size(path)
        if size != frame_size:
            raise DatasetError(f"{path}: mask is {size[1]}x{size[0]} but the frames of clip {name!r} are "
                               f"{frame_size[1]}x{frame_size[0]}")


def _numbered(folder: Path, suffixes=IMAGE_SUFFIXES) -> Dict[int, Path]:
    out: Dict[int, Path] = {}
    for p in folder.iterdir():
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
            if not p.stem.isdigit():
                raise DatasetError(f"{p}: PAS frames and masks are named by their index (0.jpg, 1.png, ...)")
            if int(p.stem) in out:
                raise DatasetError(f"{folder}: two files for frame {int(p.stem)}: {out[int(p.stem)].name}, {p.name}")
            out[int(p.stem)] = p
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ PAS
def read_pas(root: PathLike, split: str = "train", class_set: Union[str, ClassSet] = PAS) -> List[AnnotatedClip]:
    """The cases of one split of a PAS-layout dataset, one clip each."""
    cs = get_class_set(class_set)
    root = Path(root)
    img_root, mask_root = root / split / "image", root / split / "mask"
    for d in (img_root, mask_root):
        if not d.is_dir():
            raise DatasetError(f"{root} is not in the PAS layout: {d} is missing "
                               f"(expected {root}/{split}/image/case_XXXX/0.jpg and {root}/{split}/mask/case_XXXX/0.png)")
    cases = sorted(p for p in img_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise DatasetError(f"{img_root}: no case folders")
    clips = []
    for case in cases:
        frames = _numbered(case)
        if not frames:
            raise DatasetError(f"{case}: no frames")
        if list(frames) != list(range(len(frames))):
            gaps = sorted(set(range(max(frames) + 1)) - set(frames))[:5]
            raise DatasetError(f"{case}: frames must be numbered 0..N-1 without gaps; missing {gaps}")
        mask_dir = mask_root / case.name
        masks = _numbered(mask_dir, {".png"}) if mask_dir.is_dir() else {}
        missing = [i for i in frames if i not in masks]
        if missing:
            raise DatasetError(f"case {case.name}: no mask for frame(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                               f"(expected {mask_dir}/<frame>.png)")
        extra = [i for i in masks if i not in frames]
        if extra:
            raise DatasetError(f"case {case.name}: mask(s) without a frame: {[masks[i].name for i in extra[:5]]}")
        size = _image_size(frames[0])
        for i, p in frames.items():
            if _image_size(p) != size:
                raise DatasetError(f"{p}: frame size differs from {frames[0].name} in case {case.name}")
        _check_sizes(case.name, size, masks)
        paths = list(frames.values())
        clips.append(AnnotatedClip(case.name, len(paths), lambda i, paths=paths: _read_image(paths[i]), masks, cs, size))
    return clips


# -------------------------------------------------------------- generic
def read_generic(frames: PathLike, masks: PathLike, class_set: Union[str, ClassSet] = PAS, *,
                 pattern: Optional[str] = None) -> List[AnnotatedClip]:
    """Clips from a video file or frame folder plus a folder of per-frame
    index masks (see the module doc); a corrections export folder gives one
    clip per video."""
    cs = get_class_set(class_set)
    src, mask_dir = Path(frames), Path(masks)
    if not mask_dir.is_dir():
        raise DatasetError(f"mask folder not found: {mask_dir}")
    mask_paths = [p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")]
    if not mask_paths:
        raise DatasetError(f"{mask_dir}: no PNG index masks")
    if src.is_dir():
        from ...io.frame_folder import natural_key

        candidates = src.glob(pattern) if pattern else src.iterdir()
        files = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not p.name.startswith(".")]
        if not files:
            raise DatasetError(f"{src}: no frames (PNG/JPEG/TIFF/BMP){f' matching {pattern!r}' if pattern else ''}")
        # a corrections export names every frame <video>_f<index>: one clip per video
        groups = _export_groups(files) or {src.name: files}
        by_stem = {m.stem: m for m in mask_paths}
        used = set()
        clips = []
        for name, paths in groups.items():
            paths = sorted(paths, key=lambda p: natural_key(p.name))
            masks_of = {i: by_stem[p.stem] for i, p in enumerate(paths) if p.stem in by_stem}
            used.update(m.stem for m in masks_of.values())
            size = _image_size(paths[0])
            _check_sizes(name, size, masks_of)
            clips.append(AnnotatedClip(name, len(paths), lambda i, paths=paths: _read_image(paths[i]), masks_of, cs, size))
        orphans = sorted(set(by_stem) - used)
        if orphans:
            raise DatasetError(f"{mask_dir}: mask(s) without a frame of the same name in {src}: {orphans[:5]}")
        return clips
    # a video (or TIFF stack): mask names carry the frame index
    from ...io.open import open_video

    try:
        video = open_video(src)
    except VideoError as exc:
        raise DatasetError(str(exc)) from None
    n = len(video)
    masks_of: Dict[int, Path] = {}
    for m in mask_paths:
        t = _last_number(m.stem)
        if t is None:
            raise DatasetError(f"{m}: the mask name must end with its frame index (e.g. frame_000012.png)")
        if not 0 <= t < n:
            raise DatasetError(f"{m}: frame {t} is outside the video {src.name} (0..{n - 1})")
        if t in masks_of:
            raise DatasetError(f"{mask_dir}: two masks for frame {t}: {masks_of[t].name}, {m.name}")
        masks_of[t] = m
    size = tuple(np.asarray(video[0]).shape[:2])
    _check_sizes(src.stem, size, masks_of)
    return [AnnotatedClip(src.stem, n, lambda i: video[i], masks_of, cs, size)]


def _export_groups(files: Sequence[Path]) -> Dict[str, List[Path]]:
    groups: Dict[str, List[Path]] = {}
    for p in files:
        m = _EXPORT_STEM.match(p.stem)
        if not m:
            return {}
        groups.setdefault(m.group(1), []).append(p)
    return groups


# ---------------------------------------------------------- CholecSeg8k
def _decode_cholecseg8k(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
            raise DatasetError(f"{path}: CholecSeg8k id masks have R = G = B; this one does not (a colour mask?)")
        arr = arr[..., 0]
    lut = np.full(256, -1, np.int16)
    for value, cls in CHOLECSEG8K_MASK_IDS.items():
        lut[value] = cls
    out = lut[arr.astype(np.uint8)]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(arr[out < 0]))
        raise DatasetError(f"{path}: unknown CholecSeg8k mask value(s) {bad}; known: "
                           f"{sorted(CHOLECSEG8K_MASK_IDS)} (the _endo_mask.png files of some copies hold only "
                           "region outlines; read the _endo_watershed_mask.png masks)")
    return out.astype(np.uint8)


def read_cholecseg8k(folder: PathLike, *, mask_kind: str = "watershed", require_masks: bool = True,
                     class_set: Union[str, ClassSet] = CHOLECSEG8K) -> AnnotatedClip:
    """One CholecSeg8k clip folder (``frame_N_endo.png`` + id masks).
    ``mask_kind``: "watershed" (``_endo_watershed_mask.png``, the complete
    masks) or "endo" (``_endo_mask.png``). ``require_masks``: every frame
    needs a mask (else DatasetError), or frames without one are unannotated."""
    suffix = {"watershed": "_endo_watershed_mask", "endo": "_endo_mask"}.get(mask_kind)
    if suffix is None:
        raise DatasetError(f"mask_kind must be 'watershed' or 'endo', got {mask_kind!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"CholecSeg8k clip folder not found: {folder}")
    frames: Dict[int, Path] = {}
    for p in folder.glob("frame_*_endo.png"):
        t = _last_number(p.stem)
        frames[t] = p
    if not frames:
        raise DatasetError(f"{folder}: no CholecSeg8k frames (frame_N_endo.png)")
    numbers = sorted(frames)
    paths = [frames[t] for t in numbers]
    masks: Dict[int, Path] = {}
    missing = []
    for i, t in enumerate(numbers):
        m = folder / f"frame_{t}{suffix}.png"
        if m.is_file():
            masks[i] = m
        else:
            missing.append(m.name)
    if missing and require_masks:
        raise DatasetError(f"{folder}: no mask for {len(missing)} frame(s): {missing[:3]} "
                           "(require_masks=False reads them as unannotated)")
    size = _image_size(paths[0])
    _check_sizes(folder.name, size, masks)
    return AnnotatedClip(folder.name, len(paths), lambda i: _read_image(paths[i]), masks, get_class_set(class_set),
                         size, decode_mask=_decode_cholecseg8k)


def find_cholecseg8k_clips(root: PathLike, **kwargs) -> List[AnnotatedClip]:
    """Every clip folder under ``root`` (CholecSeg8k: videoNN/videoNN_XXXXX/)."""
    root = Path(root)
    folders = sorted({p.parent for p in root.rglob("frame_*_endo.png")})
    if not folders:
        raise DatasetError(f"{root}: no CholecSeg8k clip folders (frame_N_endo.png) found")
    return [read_cholecseg8k(f, **kwargs) for f in folders]


# ---------------------------------------------------------- box prompts
def box_prompts(clip: AnnotatedClip, *, every: int = 10, start: int = 0, class_ids: Optional[Sequence[int]] = None,
                jitter: float = 0.0, rng: Optional[np.random.Generator] = None,
                ) -> Dict[int, Dict[int, Tuple[float, float, float, float]]]:
    """Box prompts as the paper gives them: on frames ``start, start + every,
    ...`` a box around each class visible in that frame's mask ({frame:
    {class id: (x0, y0, x1, y1)}}). Frames without a mask get none.

    ``jitter`` (training): each coordinate moves by up to ``jitter`` times
    the box's width (x) or height (y), uniformly, clipped to the image;
    ``rng`` makes it reproducible."""
    if every < 1:
        raise DatasetError(f"box prompt interval must be >= 1, got {every}")
    if jitter < 0:
        raise DatasetError(f"box jitter must be >= 0, got {jitter}")
    ids = list(class_ids) if class_ids is not None else list(clip.class_set.ids)
    rng = rng if rng is not None else np.random.default_rng()
    h, w = clip.size
    out: Dict[int, Dict[int, Tuple[float, float, float, float]]] = {}
    for t in range(start, len(clip), every):
        mask = clip.mask(t)
        if mask is None:
            continue
        boxes = {}
        for c in ids:
            box = mask_box(mask, c)
            if box is None:
                continue
            if jitter > 0:
                x0, y0, x1, y1 = box
                bw, bh = x1 - x0 + 1, y1 - y0 + 1
                noise = rng.uniform(-jitter, jitter, 4) * np.array([bw, bh, bw, bh])
                x0, y0, x1, y1 = np.array(box) + noise
                x0, x1 = np.clip(sorted((x0, x1)), 0, w - 1)
                y0, y1 = np.clip(sorted((y0, y1)), 0, h - 1)
                box = (float(x0), float(y0), float(x1), float(y1))
            boxes[c] = box
        if boxes:
            out[t] = boxes
    return out


def class_pixel_counts(clips: Sequence[AnnotatedClip], class_set: Optional[ClassSet] = None) -> Dict[int, int]:
    """Pixels per class over all annotated frames (masks read one at a time)."""
    cs = class_set or (clips[0].class_set if clips else PAS)
    counts = {c: 0 for c in cs.ids}
    for clip in clips:
        for _, mask in clip.masks():
            values, n = np.unique(mask, return_counts=True)
            for v, k in zip(values.tolist(), n.tolist()):
                if v in counts:
                    counts[v] += k
    return counts


def add_box_prompts(engine, prompts: Mapping[int, Mapping[int, Sequence[float]]]) -> int:
    """Give ``box_prompts`` to a ``StreamingSAM2`` engine: each class is one
    object whose id is the class id, so the engine's label maps are class
    maps. Returns the number of boxes added."""
    n = 0
    for t in sorted(prompts):
        for class_id, box in sorted(prompts[t].items()):
            engine.add_box(int(t), int(class_id), list(box))
            n += 1
    return n


def write_pas(clips: Sequence[AnnotatedClip], root: PathLike, split: str = "train", *, jpeg_quality: int = 95,
              case_names: Optional[Sequence[str]] = None, progress=None, cancel=None) -> List[Path]:
    """Write clips (e.g. synthetic or augmented ones) in the PAS layout:
    frames as ``{split}/image/case_XXXX/{i}.jpg``, index masks as
    ``{split}/mask/case_XXXX/{i}.png``; every frame needs a mask. One frame
    at a time, each file written atomically. Returns the case folders."""
    from PIL import Image

    from ...atomic import atomic_path
    from ...progress import check_cancel, report

    root = Path(root)
    names = list(case_names) if case_names is not None else [f"case_{k:04d}" for k in range(len(clips))]
    if len(names) != len(clips) or len(set(names)) != len(names):
        raise DatasetError(f"give one distinct case name per clip ({len(clips)} clips, names {names[:5]})")
    total, done, out = sum(len(c) for c in clips), 0, []
    for clip, name in zip(clips, names):
        missing = [i for i in range(len(clip)) if i not in clip.mask_files]
        if missing:
            raise DatasetError(f"clip {clip.name!r}: the PAS layout needs a mask for every frame; "
                               f"none for frame(s) {missing[:5]}")
        for i in range(len(clip)):
            check_cancel(cancel)
            with atomic_path(root / split / "image" / name / f"{i}.jpg") as tmp:
                Image.fromarray(clip.frame(i)).save(tmp, format="JPEG", quality=jpeg_quality)
            with atomic_path(root / split / "mask" / name / f"{i}.png") as tmp:
                Image.fromarray(clip.mask(i)).save(tmp, format="PNG")
            done += 1
            report(progress, done, total, f"{name} frame {i}")
        out.append(root / split / "image" / name)
    return out
