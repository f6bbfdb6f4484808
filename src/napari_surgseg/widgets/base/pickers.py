"""What a method widget lets the user pick: layers, weights, device, frames.

* :func:`layer_choices` / :func:`connect_layer_refresh`: combo boxes of the
  viewer's layers of a type, kept current as layers come and go;
* :func:`weights_choices`: the registered weights of one method (and model
  variant) from the weights registry (``surgseg_core.weights``), re-read on
  every ``reset_choices`` so newly trained weights appear;
* :func:`device_choices`: the one device list of the core
  (``surgseg_core.device.available_devices``);
* :class:`FrameRange`: the one frame-range convention of every widget:
  "First frame" .. "Last frame", both included, in the video layer's own
  frame numbers; Last = -1 means "to the end".
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from magicgui.widgets import Container, SpinBox

from surgseg_core.errors import SurgsegError

#: ``variant`` of :func:`weights_choices` that keeps every variant
ANY_VARIANT = object()


def layer_choices(viewer, layer_type, optional: bool = False):
    """A magicgui ``choices`` callable listing the viewer's layers of a type
    (``optional``: a "(none)" entry first)."""

    def choices(_widget=None):
        items = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]
        return ([("(none)", None)] if optional else []) + items

    return choices


def connect_layer_refresh(viewer, container: Container) -> None:
    """Keep a container's layer combos current, docked or not."""
    for event in ("inserted", "removed", "moved", "reordered"):
        emitter = getattr(viewer.layers.events, event, None)
        if emitter is not None:
            emitter.connect(lambda _e=None: container.reset_choices())


def weights_choices(method: str, *, variant: Any = ANY_VARIANT, item: Optional[Callable] = None,
                    before: Sequence[Tuple[str, Any]] = (), after: Sequence[Tuple[str, Any]] = (),
                    present_only: bool = False, on_error: Optional[Callable[[str], None]] = None):
    """A magicgui ``choices`` callable: ``before`` + the registry's weights of
    ``method`` (and ``variant``: None = the plain model; default any) + ``after``.

    ``item(entry) -> (label, value)`` (default: ``(name, entry)``);
    ``present_only``: skip entries whose file is missing (official weights
    not downloaded yet). An unreadable registry is reported once through
    ``on_error`` and lists nothing, so the widget still works."""

    def choices(_widget=None) -> List[Tuple[str, Any]]:
        from surgseg_core.weights import list_weights

        kwargs = {} if variant is ANY_VARIANT else {"variant": variant}
        try:
            entries = list_weights(method=method, **kwargs)
        except SurgsegError as exc:
            if on_error is not None:
                on_error(str(exc))
            entries = []
        if present_only:
            entries = [e for e in entries if e.present]
        make = item or (lambda e: (e.name, e))
        return list(before) + [make(e) for e in entries] + list(after)

    return choices


def device_choices() -> List[str]:
    """"auto", "cpu" and the accelerators present (the core's one list)."""
    from surgseg_core.device import available_devices

    return available_devices()


def device_value(choice: Optional[str]) -> Optional[str]:
    """What a core function takes for a device choice ("auto" -> None: the core picks)."""
    return None if choice in (None, "", "auto") else str(choice)


class FrameRange:
    """The frame range of every method widget: two spin boxes, ``start_spin``
    ("First frame") and ``end_spin`` ("Last frame", -1: to the end), both
    frames included, in the video layer's own frame numbers."""

    def __init__(self, first_label: str = "First frame", last_label: str = "Last frame") -> None:
        self.start_spin = SpinBox(label=first_label, min=0, max=10**7, value=0)
        self.end_spin = SpinBox(label=last_label, min=-1, max=10**7, value=-1)
        self.start_spin.tooltip = "first frame to run on (the video layer's own frame number)"
        self.end_spin.tooltip = "last frame to run on, included; -1: to the end of the video"

    @property
    def widgets(self) -> list:
        return [self.start_spin, self.end_spin]

    def resolve(self, n_frames: int, *, include: Optional[int] = None) -> Tuple[int, int]:
        """(first, last), both included, for a video of ``n_frames`` frames;
        ``include``: widen the range to contain that frame. SurgsegError when
        the range is empty or outside the video."""
        return resolve_range(int(self.start_spin.value), int(self.end_spin.value), n_frames, include=include)

    def set(self, first: int, last: int) -> None:
        self.start_spin.value, self.end_spin.value = int(first), int(last)


def resolve_range(first: int, last: int, n_frames: int, *, include: Optional[int] = None) -> Tuple[int, int]:
    """The convention of :class:`FrameRange` as a function: ``last`` -1 (or
    any negative) is the last frame; both ends included."""
    if n_frames <= 0:
        raise SurgsegError("the video has no frames")
    end = n_frames - 1 if last < 0 else int(last)
    first = int(first)
    if include is not None:
        first, end = min(first, int(include)), max(end, int(include))
    if first > end:
        raise SurgsegError(f"First frame {first} is after Last frame {end}")
    if not 0 <= first <= end < n_frames:
        raise SurgsegError(f"frame range {first}..{end} is outside the video (0..{n_frames - 1})")
    return first, end
