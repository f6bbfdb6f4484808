"""What the engine produces for one frame, and sinks that consume it frame
by frame (nothing is accumulated for the whole video)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import WriteError


@dataclass
class FrameResult:
    """Masks of all objects on one frame, at the video's resolution."""

    frame_idx: int
    obj_ids: List[int]
    logits: torch.Tensor  # (n_obj, H, W) float32 mask logits (CPU)
    object_scores: np.ndarray  # (n_obj,) object-presence logits (>0: visible)

    def masks(self) -> np.ndarray:
        """(n_obj, H, W) bool: SAM2's mask = logits > 0."""
        return (self.logits > 0).numpy()

    def object_mask(self, obj_id: int) -> np.ndarray:
        """uint8 0/1 label map of one object."""
        return (self.logits[self.obj_ids.index(obj_id)] > 0).numpy().astype(np.uint8)

    def label_map(self, threshold: float = 0.0) -> np.ndarray:
        """Merged multi-class map: each pixel gets the id of the object with
        the highest logit among those with logit > ``threshold``, else 0."""
        return merge_object_logits(self.logits, self.obj_ids, threshold)


def merge_object_logits(logits: Any, obj_ids: Sequence[int], threshold: float = 0.0) -> np.ndarray:
    """One label map from per-object logits (n_obj, ..., H, W) (numpy or
    torch): the id of the object with the highest logit among those above
    ``threshold``, 0 (background) where none is."""
    ids = [int(i) for i in obj_ids]
    t = torch.as_tensor(logits)
    if t.shape[0] != len(ids):
        raise ValueError(f"{t.shape[0]} logit maps for {len(ids)} object ids")
    dtype = np.uint8 if max(ids, default=0) < 256 else np.uint16
    if not ids:
        return np.zeros(tuple(t.shape[1:]), dtype)
    best, arg = t.float().max(dim=0)
    lut = torch.as_tensor(ids, dtype=torch.int64, device=t.device)
    labels = torch.where(best > threshold, lut[arg], torch.zeros_like(arg))
    return labels.cpu().numpy().astype(dtype)


class ArrayWriter:
    """Fills a provided array frame by frame (numpy array, memmap, zarr,
    a napari Labels layer's data): ``array[frame] = label_map`` or, with
    ``per_object=True``, ``array[frame, i] = mask of object i`` (0/1)."""

    def __init__(self, array: Any, *, per_object: bool = False) -> None:
        self.array = array
        self.per_object = per_object
        self.frames_written = 0

    def __call__(self, result: FrameResult) -> None:
        if self.per_object:
            self.array[result.frame_idx] = result.masks().astype(np.uint8)
        else:
            self.array[result.frame_idx] = result.label_map()
        self.frames_written += 1


class PngLabelWriter:
    """Writes one PNG label map per frame, atomically (a crash or a Stop
    never leaves a half-written file): ``folder/000123.png`` with the merged
    map, or ``folder/obj_<id>/000123.png`` (0/1) per object."""

    def __init__(self, folder: Union[str, Path], *, per_object: bool = False, digits: int = 6,
                 overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.per_object = per_object
        self.digits = digits
        old = self.previous_outputs(self.folder)
        if old and not overwrite:
            raise WriteError(f"{self.folder} already holds {len(old)} mask file(s) of an earlier run: a new run would "
                             "mix with them; choose an empty folder, or overwrite (--overwrite) to replace them")
        for path in old:  # only what a writer writes: the folder may hold the user's other files
            path.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames_written: List[int] = []

    @staticmethod
    def previous_outputs(folder: Path) -> List[Path]:
        """Label maps and provenance a writer left in ``folder``. provenance.json is
        written last (with the run's status): a folder without it is incomplete."""
        if not folder.is_dir():
            return []
        found = [p for p in folder.glob("*.png") if p.stem.isdigit()]
        found += [p for d in folder.glob("obj_*") if d.is_dir() for p in d.glob("*.png") if p.stem.isdigit()]
        prov = folder / "provenance.json"
        return found + ([prov] if prov.is_file() else [])

    def path_for(self, frame_idx: int, obj_id: Optional[int] = None) -> Path:
        name = f"{frame_idx:0{self.digits}d}.png"
        return self.folder / name if obj_id is None else self.folder / f"obj_{obj_id}" / name

    def __call__(self, result: FrameResult) -> None:
        from PIL import Image

        if self.per_object:
            for obj_id in result.obj_ids:
                _write_png(self.path_for(result.frame_idx, obj_id), result.object_mask(obj_id), Image)
        else:
            _write_png(self.path_for(result.frame_idx), result.label_map(), Image)
        self.frames_written.append(result.frame_idx)

    def write_provenance(self, provenance: Dict[str, Any]) -> Path:
        target = self.folder / "provenance.json"
        atomic_write_text(target, json.dumps(provenance, indent=2, default=str))
        return target


def _write_png(path: Path, labels: np.ndarray, Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")


class Tee:
    """Send each frame to several sinks."""

    def __init__(self, *sinks: Sequence) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def __call__(self, result: FrameResult) -> None:
        for sink in self.sinks:
            sink(result)
