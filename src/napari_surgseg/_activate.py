"""Plugin activation (npe2 ``on_activate``): runs once per napari session, the
first time any contribution of the plugin is used (reader, widget, sample).

napari asks "Choose reader" for every video because its own reader also
claims ``*.mp4`` etc., and that one loads the whole clip into memory. On first
use we make our lazy reader napari's preference for the video extensions the
user has no preference for (napari's ``plugins.extension2reader`` setting)
and say so once. A choice the user made is never changed; see the README
("Which reader opens videos") for how to change it back.
"""
from __future__ import annotations

from typing import Any, List

from ._reader import VIDEO_SUFFIXES

PLUGIN = "napari-surgseg"
#: napari matches reader preferences case-sensitively on Linux: both spellings.
VIDEO_PATTERNS = tuple(f"*{s}" for s in sorted(VIDEO_SUFFIXES)) + tuple(
    f"*{s.upper()}" for s in sorted(VIDEO_SUFFIXES)
)


def on_activate(ctx: Any = None) -> None:
    prefer_lazy_video_reader()


def prefer_lazy_video_reader(*, notify: bool = True) -> List[str]:
    """Make napari-surgseg napari's reader for the video patterns that have no
    preferred reader yet; returns the patterns set (empty when nothing changed)."""
    from napari.plugins.utils import get_preferred_reader
    from napari.settings import get_settings

    missing = [p for p in VIDEO_PATTERNS if get_preferred_reader(f"video{p[1:]}") is None]
    if not missing:
        return []
    settings = get_settings()
    # one assignment: napari saves its settings file once, on change
    settings.plugins.extension2reader = {**settings.plugins.extension2reader, **{p: PLUGIN for p in missing}}
    if notify:
        from napari.utils.notifications import show_info

        shown = ", ".join(p[1:] for p in missing if p[2:].islower())
        show_info(
            f"SurgSeg now opens {shown} files (frame by frame, not the whole clip in memory) without asking "
            "which reader to use. To change it: File > Preferences > Plugins > 'File extension readers'."
        )
    return missing
