"""The official SAM 2 / SAM 2.1 checkpoints published by Meta.

SHA-256 digests: none of the official checkpoints' digests could be found in
a source we could cite while writing this table (Meta publishes none), and
we never invent one. ``sha256=None`` therefore means "unknown": the first
download/import is checked by size (``approx_mb`` +-10 %) and by loading
its keys into the matching architecture, then the digest actually seen is
recorded in the local registry and every later ``verify`` compares against
it (trust on first use). Fill in a digest here once it is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"


@dataclass(frozen=True)
class OfficialCheckpoint:
    name: str  # registry name, also the file name without ".pt"
    config: str  # config name inside the sam2 package
    url: str
    approx_mb: float  # published size, used for a plausibility check only
    sha256: Optional[str] = None  # None: unknown, recorded on first download

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def _entry(name: str, config: str, base: str, approx_mb: float) -> OfficialCheckpoint:
    return OfficialCheckpoint(name=name, config=config, url=f"{base}{name}.pt", approx_mb=approx_mb)


OFFICIAL: Dict[str, OfficialCheckpoint] = {
    e.name: e
    for e in (
        _entry("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", _BASE_21, 156),
        _entry("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", _BASE_21, 184),
        _entry("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", _BASE_21, 324),
        _entry("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", _BASE_21, 898),
        _entry("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml", _BASE_20, 156),
        _entry("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml", _BASE_20, 185),
        _entry("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml", _BASE_20, 324),
        _entry("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml", _BASE_20, 898),
    )
}
