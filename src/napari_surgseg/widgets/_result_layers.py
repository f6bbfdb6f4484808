"""Result layers that never get in the user's way.

napari selects every layer it adds, so a result layer created when a run
starts took the selection from the prompt (or other) layer the user was
clicking in, and a failed run left it behind, empty and selected: the next
click landed in it. Widgets add result layers with :func:`add_result_layer`
(the selection stays as it was) and remove what a failed run created with
:func:`discard_layers`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator


@contextmanager
def keep_selection(viewer) -> Iterator[None]:
    """Restore the layer selection (and so the active layer) on exit."""
    selection = viewer.layers.selection
    before = list(selection)
    try:
        yield
    finally:
        kept = [layer for layer in before if layer in viewer.layers]
        if set(selection) != set(kept):
            selection.clear()
            selection.update(kept)  # one selected layer becomes the active one again


def add_result_layer(viewer, layer):
    """``viewer.add_layer(layer)`` without changing the selected layer."""
    with keep_selection(viewer):
        return viewer.add_layer(layer)


def discard_layers(viewer, layers: Iterable) -> None:
    """Remove the layers a failed run created (those still in the viewer)
    and stop autosaving them."""
    from .._autosave import unwatch_layer

    with keep_selection(viewer):
        for layer in layers:
            if layer is None:
                continue
            unwatch_layer(layer)
            if layer in viewer.layers:
                viewer.layers.remove(layer)
