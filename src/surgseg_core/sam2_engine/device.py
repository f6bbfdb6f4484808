"""Device and precision for the SAM2 engine: the shared resolver of
``surgseg_core.device`` (kept here under its old import path)."""
from __future__ import annotations

from ..device import autocast, enable_fast_math, resolve_device, resolve_precision

pick_device = resolve_device  # the engine's historical name

__all__ = ["autocast", "enable_fast_math", "pick_device", "resolve_device", "resolve_precision"]
