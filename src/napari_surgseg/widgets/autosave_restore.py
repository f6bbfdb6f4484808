"""Section "Restore autosaved corrections" (embedded in the corrections
widget): lists the autosaved snapshots of the chosen video and adds the
selected ones back as layers named "<name> (restored)", which are autosaved
again from then on."""
from __future__ import annotations

from typing import Any, Callable, List, Optional

from magicgui.widgets import Container, Label, PushButton
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem

from surgseg_core.errors import SurgsegError
from surgseg_core.io.autosave import autosave_dir, list_snapshots

from .._autosave import add_restored_layers, load_entries
from .._workers import run_in_worker

_ENTRY_ROLE = 256  # Qt.UserRole


def _describe(entry: dict) -> str:
    when = str(entry.get("saved_at", ""))[:19].replace("T", " ")
    size = f", {entry['n_frames']} frame(s)" if entry.get("n_frames") else ""
    if entry.get("count") is not None:
        size += f", {entry['count']} item(s)"
    return f"{entry['name']}  [{entry['kind']}{size}, saved {when} UTC]"


class AutosaveRestoreSection(Container):
    """``source_of()`` returns the source video path of the chosen image
    layer (or None: snapshots saved without a source)."""

    def __init__(self, napari_viewer, source_of: Callable[[], Optional[str]]) -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.source_of = source_of
        self.worker = None
        self.title = Label(value="<b>Restore autosaved corrections</b>")
        self.refresh_button = PushButton(text="Refresh list")
        self.restore_button = PushButton(text="Restore")
        self.restore_button.tooltip = "add the selected snapshots (all when none is selected) as new layers"
        self.snapshot_list = QListWidget()
        self.snapshot_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.snapshot_list.setMaximumHeight(120)
        self.extend([self.title, self.refresh_button, self.restore_button])
        self.native.layout().insertWidget(1, self.snapshot_list)
        self.refresh_button.changed.connect(self.refresh)
        self.restore_button.changed.connect(self.restore)
        self.refresh()

    def refresh(self, *_: Any) -> List[dict]:
        self.snapshot_list.clear()
        try:
            entries = list_snapshots(autosave_dir(self.source_of()))
        except SurgsegError as exc:
            show_error(f"Restore autosaved corrections: {exc}")
            entries = []
        for entry in entries:
            item = QListWidgetItem(_describe(entry))
            item.setData(_ENTRY_ROLE, entry)
            self.snapshot_list.addItem(item)
        if not entries:
            self.snapshot_list.addItem(QListWidgetItem("(no autosaved layers for this video)"))
        return entries

    def entries(self, selected_only: bool = False) -> List[dict]:
        items = self.snapshot_list.selectedItems() if selected_only else [
            self.snapshot_list.item(i) for i in range(self.snapshot_list.count())]
        return [it.data(_ENTRY_ROLE) for it in items if it.data(_ENTRY_ROLE)]

    def restore(self, *_: Any):
        """Load the selected snapshots (all when none selected) in a worker
        and add them as layers."""
        entries = self.entries(selected_only=True) or self.entries()
        if not entries:
            show_error("Restore autosaved corrections: nothing autosaved for this video")
            return None
        source = self.source_of()
        self.restore_button.enabled = False

        def done(layer_data: List[tuple]) -> None:
            self.restore_button.enabled = True
            add_restored_layers(self.viewer, layer_data, source)

        self.worker, _ = run_in_worker(load_entries, entries, on_done=done, description="Restore autosave", owner=self)
        self.worker.errored.connect(lambda *_: setattr(self.restore_button, "enabled", True))
        return self.worker
