"""The bounded memory bank of the streaming engine.

SAM2VideoPredictor keeps every frame's output for the whole video. Memory
attention only ever reads (see ``SAM2Base._prepare_memory_conditioned_features``):
  * the conditioning (prompted) frames chosen by ``select_closest_cond_frames``;
  * the memories of the ``num_maskmem - 1`` previous frames (stride ``r``);
  * the object pointers of up to ``min(num_frames, max_obj_ptrs_in_encoder) - 1``
    previous frames.
So we keep all prompted frames (their number is the user's, not the video's)
and the non-conditioning outputs within ``window`` frames of the propagation
head or of a prompted frame (where a later propagation may start, e.g. the
backward half of a "both" propagation reads the forward half's first frames).
Everything else is dropped: memory stays flat with video length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

UNTRACKED, FORWARD, BACKWARD = -1, 0, 1


@dataclass
class ObjectMemory:
    """Everything the engine remembers about one object."""

    obj_id: int
    num_frames: int
    cond: Dict[int, dict] = field(default_factory=dict)  # prompted frames
    non_cond: Dict[int, dict] = field(default_factory=dict)  # bounded window
    pending: Dict[int, Tuple[dict, bool]] = field(default_factory=dict)  # prompt outputs awaiting memory encoding
    point_inputs: Dict[int, dict] = field(default_factory=dict)
    mask_inputs: Dict[int, object] = field(default_factory=dict)
    tracked: np.ndarray = None  # per frame: UNTRACKED / FORWARD / BACKWARD (1 byte a frame)

    def __post_init__(self) -> None:
        if self.tracked is None:
            self.tracked = np.full(self.num_frames, UNTRACKED, dtype=np.int8)

    def output_at(self, frame_idx: int) -> Optional[dict]:
        """Latest output on a frame: pending first, then cond, then non-cond."""
        if frame_idx in self.pending:
            return self.pending[frame_idx][0]
        return self.cond.get(frame_idx) or self.non_cond.get(frame_idx)

    def prompted_frames(self) -> List[int]:
        return sorted(set(self.cond) | set(self.pending))


def recent_prompt_frames(prompted: Iterable[int], frame_idx: int, reverse: bool, n: int) -> List[int]:
    """F2PASeg's prompt partitioning: the ``n`` latest prompted frames at or
    before ``frame_idx`` in the direction of travel (at or after it when
    tracking backward); when there is none on that side, the ``n``
    temporally closest. Shared by the streaming engine and training code."""
    prompted = sorted(set(int(t) for t in prompted))
    if reverse:
        eligible = [t for t in prompted if t >= frame_idx][:n]
    else:
        eligible = [t for t in prompted if t <= frame_idx][-n:]
    if not eligible:
        eligible = sorted(sorted(prompted, key=lambda t: abs(t - frame_idx))[:n])
    return eligible


class MemoryPolicy:
    """Which non-conditioning outputs to keep, and which prompted frames
    memory attention sees."""

    def __init__(
        self,
        *,
        num_maskmem: int,
        stride: int,
        max_obj_ptrs: int,
        num_frames: int,
        keep_recent_prompt_frames: Optional[int] = None,
    ) -> None:
        self.mask_reach = stride * num_maskmem  # farthest frame a memory may come from
        self.ptr_reach = max(0, min(num_frames, max_obj_ptrs) - 1)
        self.window = memory_window(num_maskmem=num_maskmem, stride=stride, max_obj_ptrs=max_obj_ptrs,
                                    num_frames=num_frames)
        self.clear_reach = stride * num_maskmem  # SAM2's clear_non_cond_mem_around_input range
        self.keep_recent_prompt_frames = keep_recent_prompt_frames

    def prune(self, mem: ObjectMemory, head: Optional[int], anchors: Iterable[int]) -> None:
        anchors = list(anchors)
        keep_near = anchors + ([head] if head is not None else [])
        for f in list(mem.non_cond):
            if not any(abs(f - a) <= self.window for a in keep_near):
                del mem.non_cond[f]

    def clear_around(self, mem: ObjectMemory, frame_idx: int) -> None:
        for t in range(frame_idx - self.clear_reach, frame_idx + self.clear_reach + 1):
            mem.non_cond.pop(t, None)

    def view(self, mem: ObjectMemory, frame_idx: int, reverse: bool) -> Tuple[Dict[int, dict], Dict[int, dict]]:
        """(cond, non_cond) outputs to hand to ``track_step`` for ``frame_idx``
        (see :func:`select_memory`)."""
        return select_memory(mem.cond, mem.non_cond, frame_idx, reverse, window=self.window,
                             keep_recent_prompt_frames=self.keep_recent_prompt_frames)


def memory_window(*, num_maskmem: int, stride: int, max_obj_ptrs: int, num_frames: int) -> int:
    """How far (in frames) memory attention can reach back: the mask memories
    (``stride * num_maskmem``) or the object pointers, whichever is farther."""
    return max(stride * num_maskmem, max(0, min(num_frames, max_obj_ptrs) - 1))


def select_memory(
    cond: Dict[int, dict],
    non_cond: Dict[int, dict],
    frame_idx: int,
    reverse: bool,
    *,
    window: int,
    keep_recent_prompt_frames: Optional[int] = None,
) -> Tuple[Dict[int, dict], Dict[int, dict]]:
    """The frame-selection rule shared by the streaming engine and the
    trainable clip forward (``methods.sam2.clip``): which prompted
    (``cond``) and other (``non_cond``) outputs ``track_step`` sees for
    ``frame_idx``.

    Only frames memory attention can read (within ``window``) are included.
    With ``keep_recent_prompt_frames=N`` (F2PASeg prompt partitioning), the
    conditioning frames are the N latest prompted frames at or before the
    current one (at or after when tracking backward); the other prompted
    frames are offered as ordinary memories, as SAM2 does with the
    prompted frames its own selection leaves out.
    """
    near = lambda t: abs(t - frame_idx) <= window  # noqa: E731
    non_cond = {t: out for t, out in non_cond.items() if near(t)}
    cond = dict(cond)
    n = keep_recent_prompt_frames
    if n is not None and cond:  # also with <= n prompts: never one beyond the current frame
        eligible = recent_prompt_frames(cond, frame_idx, reverse, n)
        for t in list(cond):
            if t not in eligible:
                out = cond.pop(t)
                if near(t):
                    non_cond.setdefault(t, out)
    return cond, non_cond
