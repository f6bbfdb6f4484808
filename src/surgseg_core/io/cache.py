"""Least-recently-used cache of decoded frames, capped in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import numpy as np


class FrameCache:
    """Thread-safe LRU keyed by frame index. ``nbytes`` never exceeds
    ``max_bytes``: a frame larger than the cap is simply not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def get(self, key: int) -> Optional[np.ndarray]:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: int, value: np.ndarray) -> None:
        size = value.nbytes
        if size > self.max_bytes:
            return
        value.flags.writeable = False  # shared between callers: they get copies
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            while self._items and self._nbytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._nbytes -= evicted.nbytes
            self._items[key] = value
            self._nbytes += size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0
