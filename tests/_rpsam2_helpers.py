"""Synthetic instrument frames for the RP-SAM2 tests: frames of the
endoscopy generator with their instrument index masks (one id per tool)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image


def instrument_frames(seed: int, n: int, height: int = 120, width: int = 160, min_pixels: int = 60) -> List:
    """[(image, instruments index map)] of frames that show an instrument."""
    from surgseg_core.synth import generate_endoscopy_clip

    clip = generate_endoscopy_clip(seed, max(n * 4, 8), height, width)
    out = []
    for i in range(len(clip)):
        f = clip.frame(i)
        ids, counts = np.unique(f.instruments, return_counts=True)
        if any(k and c >= min_pixels for k, c in zip(ids, counts)):
            out.append((f.image, f.instruments))
        if len(out) == n:
            break
    return out


def write_image_mask(root: Path, frames) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, (img, mask) in enumerate(frames):
        Image.fromarray(img).save(root / "images" / f"f{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"f{i:03d}.png")
    return root
