"""Interactive clicking: one streaming engine per (video, model), kept alive
between clicks, so the image encoder runs once per frame and every later
click on that frame only runs SAM2's prompt encoder and mask decoder.

    session = ClickSession()
    result = session.segment_frame(frames, model, 12, prompts)   # encodes frame 12
    result = session.segment_frame(frames, model, 12, more)      # decoder only
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..progress import CancelToken, check_cancel
from .engine import StreamingSAM2
from .outputs import FrameResult


class ClickSession:
    """Engines keyed by (video, model) object identity; the engine holds
    both, so a key cannot be reused by another object while it lives.
    ``max_engines``: how many (video, model) pairs stay encoded (each keeps
    up to ``embed_cache_mb`` of features). ``engine_options`` go to
    ``StreamingSAM2`` (e.g. ``prompt_hook``); ``fast_clicks`` is on unless
    given (``fast_heads``: a preview's masks equal SAM2's up to float
    rounding)."""

    def __init__(self, max_engines: int = 1, **engine_options: Any) -> None:
        if max_engines < 1:
            raise ConfigError(f"max_engines must be >= 1, got {max_engines}")
        self.max_engines = int(max_engines)
        self.engine_options = {"fast_clicks": True, **engine_options}
        self._engines: "OrderedDict[Tuple[int, int], StreamingSAM2]" = OrderedDict()
        self._lock = threading.Lock()

    def engine(self, frames: Any, model) -> StreamingSAM2:
        """The engine of (``frames``, ``model``), created on first use."""
        key = (id(frames), id(model))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None or engine.frames is not frames or engine.model is not model:
                engine = StreamingSAM2(model, frames, **self.engine_options)
                self._engines[key] = engine
                while len(self._engines) > self.max_engines:
                    self._engines.popitem(last=False)
            self._engines.move_to_end(key)
            return engine

    def find(self, frames: Any, model) -> Optional[StreamingSAM2]:
        """The engine of (``frames``, ``model``) if there is one (creates nothing)."""
        with self._lock:
            engine = self._engines.get((id(frames), id(model)))
        return engine if engine is not None and engine.frames is frames and engine.model is model else None

    def segment_frame(
        self,
        frames: Any,
        model,
        frame: int,
        prompts: Sequence[Mapping[str, Any]],
        *,
        cancel: Optional[CancelToken] = None,
    ) -> FrameResult:
        """Masks of every prompted object on ``frame`` from that frame's
        prompts alone (``track.normalize_prompts`` format, video pixels;
        prompts on other frames are ignored). Earlier prompts are forgotten,
        the frame's features are kept."""
        engine = self.engine(frames, model)
        here = [p for p in prompts if int(p["frame"]) == int(frame)]
        if not here:
            raise ConfigError(f"no prompts on frame {frame}")
        with engine._lock:  # one click at a time on this engine
            engine.reset()
            for p in here:
                check_cancel(cancel)
                points = p.get("points") or None
                labels = p.get("labels") or None
                # each call returns all objects' masks on the frame: the last one is the result
                result = engine.add_points(int(frame), int(p.get("obj_id", 1)), points, labels, box=p.get("box"))
            return result

    def close(self) -> None:
        """Drop all engines (and their cached features)."""
        with self._lock:
            self._engines.clear()

    def __len__(self) -> int:
        return len(self._engines)
