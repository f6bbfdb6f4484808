"""Per-frame image-embedding cache, LRU and capped in megabytes, so a click
on a frame that was already encoded only runs SAM2's prompt encoder and
mask decoder (milliseconds) instead of the image encoder (seconds on CPU)."""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional

import torch


def _nbytes(tensors: List[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class EmbeddingCache:
    """Maps frame index -> backbone feature maps (list of tensors).

    ``max_mb`` caps the total size; the most recently used entry is always
    kept even if it alone exceeds the cap (the frame being worked on)."""

    def __init__(self, max_mb: float = 256.0) -> None:
        self.max_bytes = int(max_mb * 1024 * 1024)
        self._entries: "OrderedDict[int, List[torch.Tensor]]" = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, frame_idx: int) -> Optional[List[torch.Tensor]]:
        feats = self._entries.get(frame_idx)
        if feats is None:
            self.misses += 1
            return None
        self._entries.move_to_end(frame_idx)
        self.hits += 1
        return feats

    def put(self, frame_idx: int, feats: List[torch.Tensor]) -> None:
        old = self._entries.pop(frame_idx, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._entries[frame_idx] = feats
        self._bytes += _nbytes(feats)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __contains__(self, frame_idx: int) -> bool:
        return frame_idx in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def frames(self) -> List[int]:
        return list(self._entries)
