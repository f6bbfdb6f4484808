"""The official SAM 2 / SAM 2.1 checkpoints published by Meta.

SHA-256 digests of the SAM 2.1 checkpoints are pinned: they are published
in micro-sam's model registry (``micro_sam/v2/util.py``) and match the
publisher's LFS metadata. A download or import of these names is refused
unless its bytes hash to the pinned value. For the SAM 2 (2.0) checkpoints
no digest was found in a source we could cite, and we never invent one:
``sha256=None`` means "unknown", and the first download/import is checked
by size (``approx_mb`` +-10 %) and architecture (``arch``), then the digest
actually seen is recorded in the local registry and every later check
compares against it (trust on first use).

``arch`` (Hiera embedding width, Hiera block count, SAM 2.1 or 2.0) is what
a checkpoint's keys reveal about the model it belongs to; it tells a wrong
file (another model, or not SAM2 at all) apart from a damaged or modified
copy of the right one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"

Arch = Tuple[int, int, bool]  # (Hiera embed_dim, Hiera blocks, SAM 2.1)


@dataclass(frozen=True)
class OfficialCheckpoint:
    name: str  # registry name, also the file name without ".pt"
    config: str  # config name inside the sam2 package
    url: str
    approx_mb: float  # published size, used for a plausibility check only
    arch: Optional[Arch] = None  # what its keys look like (see module doc)
    sha256: Optional[str] = None  # published digest; None: unknown, recorded on first download

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def _entry(name: str, config: str, base: str, approx_mb: float, arch: Arch, sha256: Optional[str] = None):
    return OfficialCheckpoint(name=name, config=config, url=f"{base}{name}.pt", approx_mb=approx_mb, arch=arch,
                              sha256=sha256)


OFFICIAL: Dict[str, OfficialCheckpoint] = {
    e.name: e
    for e in (
        _entry("sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", _BASE_21, 156, (96, 12, True),
               "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
        _entry("sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", _BASE_21, 184, (96, 16, True),
               "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
        _entry("sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", _BASE_21, 324, (112, 24, True),
               "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
        _entry("sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", _BASE_21, 898, (144, 48, True),
               "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
        _entry("sam2_hiera_tiny", "configs/sam2/sam2_hiera_t.yaml", _BASE_20, 156, (96, 12, False)),
        _entry("sam2_hiera_small", "configs/sam2/sam2_hiera_s.yaml", _BASE_20, 185, (96, 16, False)),
        _entry("sam2_hiera_base_plus", "configs/sam2/sam2_hiera_b+.yaml", _BASE_20, 324, (112, 24, False)),
        _entry("sam2_hiera_large", "configs/sam2/sam2_hiera_l.yaml", _BASE_20, 898, (144, 48, False)),
    )
}

_SAM2_PREFIXES = ("image_encoder.", "sam_mask_decoder.", "sam_prompt_encoder.", "memory_encoder.", "memory_attention.")


def is_sam2_state(state: Mapping[str, object]) -> bool:
    """Whether a state dict has the modules of a SAM2 model."""
    return all(any(k.startswith(p) for k in state) for p in _SAM2_PREFIXES)


def state_arch(state: Mapping[str, object]) -> Optional[Arch]:
    """(Hiera embed_dim, Hiera blocks, SAM 2.1) read off a SAM2 state dict's
    keys and shapes (None if it is not a SAM2 model's)."""
    proj = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if proj is None or not is_sam2_state(state):
        return None
    prefix = "image_encoder.trunk.blocks."
    blocks = {k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return int(getattr(proj, "shape")[0]), len(blocks), "no_obj_embed_spatial" in state


def official_with_arch(arch: Arch) -> list:
    """Names of the official checkpoints with this architecture."""
    return [ck.name for ck in OFFICIAL.values() if ck.arch == arch]
