"""Autosave of layers users correct (Labels, Points, Shapes): every edit
restarts a short single-shot timer; when it fires the layer is snapshotted
to disk in a worker thread (core: :mod:`surgseg_core.io.autosave`).

At most one save per layer runs at a time; edits during a save are folded
into one more save after it. Saves run on their own (non-daemon) threads,
not in Qt's global thread pool: there they queued behind long model
workers and, when napari closed meanwhile, never ran before quit and then
emitted into deleted Qt objects (an aborted process on a busy 2-core CI
machine). A plain thread never waits for a pool slot, touches no Qt object
after quit, and Python finishes it before the process exits, so the last
corrections always reach the disk. Small data is copied on the GUI thread when the
timer fires (cheap, and a consistent snapshot); big label stacks are not
copied at all (a multi-GB copy would freeze napari and double memory): the
worker copies and writes them one frame at a time, and any stroke that lands
during the save schedules the next save. A save after brush strokes reads and
compresses only the frames napari's paint events name (the core copies the
rest from the last snapshot); after a model run or an undo every frame is
compared with the last snapshot's digests.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, Qt, QThreadPool, QTimer, Signal

from surgseg_core.io import autosave as core

log = logging.getLogger(__name__)

#: Seconds of work a kill can lose: a layer is saved this long after its last edit
#: (``$SURGSEG_AUTOSAVE_INTERVAL_MS`` changes it, e.g. for tests or slow disks).
DEFAULT_INTERVAL_MS = 2000
ENV_INTERVAL = "SURGSEG_AUTOSAVE_INTERVAL_MS"
#: Label stacks above this size are streamed from the live array instead of copied.
COPY_LIMIT_BYTES = 256 * 2**20
#: A save may use at most ~1/(1 + this) of a core: the next one waits this many
#: times as long as the last one took (big stacks on slow disks).
BACKOFF = 2.0

#: On quit, saves get this long before a log line says napari waits for them
#: (the process still ends only after they wrote the user's latest corrections).
QUIT_WAIT_S = 15.0

# layer -> its watcher; weak so a deleted layer takes its watcher with it.
_WATCHERS: "weakref.WeakKeyDictionary[Any, _LayerAutosave]" = weakref.WeakKeyDictionary()
_QUIT_HOOKED = []  # the QApplication whose aboutToQuit waits for running saves
# set when Qt quits: save threads then report to nobody (their watcher's signals may be gone)
_QUITTING = threading.Event()


def _finish_saves_on_quit() -> None:
    """Closing napari while a layer is being saved, or within the interval
    after a correction: on quit, pending changes are written after the
    running save of their layer, and quit waits for all of them, so the
    last corrections are on disk and no save reports into deleted Qt
    objects."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None or any(a is app for a in _QUIT_HOOKED):
        return

    def finish() -> None:
        _QUITTING.set()
        threads = [t for t in (w.finish_on_quit() for w in list(_WATCHERS.values())) if t is not None]
        deadline = time.monotonic() + QUIT_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [t.name for t in threads if t.is_alive()]
        if late:
            log.warning("napari closes once autosave finishes writing (%s still running after %.0f s)",
                        ", ".join(late), QUIT_WAIT_S)
        # other workers (models) emit their (now undelivered) last signals, then end
        QThreadPool.globalInstance().waitForDone(1000)

    app.aboutToQuit.connect(finish)
    _QUIT_HOOKED.append(app)


def layer_kind(layer) -> str:
    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Points):
        return "points"
    if isinstance(layer, Shapes):
        return "shapes"
    raise TypeError(f"autosave handles Labels, Points and Shapes layers, not {type(layer).__name__}")


class _LayerAutosave(QObject):
    # emitted by the layer's events (maybe from a worker thread); the queued
    # connection starts the timer on the GUI thread.
    _poke = Signal()
    # emitted by the save thread with ("ok", (path, seconds)) or ("error", (name, exc))
    _save_ended = Signal(object)
    # queued after a paint event: its event-loop turn has ended
    _paint_turn_over = Signal()

    def __init__(self, layer, source: Optional[str], interval_ms: int, edits_only: bool = False) -> None:
        super().__init__()
        # edits_only: a layer opened from a file is on disk already; refreshes
        # alone (adding it, the time slider) save nothing until the first edit
        self._armed = not edits_only
        self.kind = layer_kind(layer)
        self.source = source
        self.folder = core.autosave_dir(source)
        self.interval_ms = int(interval_ms)
        self._layer = weakref.ref(layer)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._fire)
        self._poke.connect(self._timer.start)
        self._save_ended.connect(self._on_save_ended)
        self._paint_turn_over.connect(self._end_paint_turn, Qt.ConnectionType.QueuedConnection)
        self._paint_turn = False  # a paint event came in this event-loop turn
        self._sure_changed = False  # a paint/data event (not just a refresh) since the last save
        self._pending = False  # a change arrived while a save was running
        self._thread: Optional[threading.Thread] = None  # the running save
        self._warned = False
        self.saves = 0
        self._connections = []
        # labels: the frames painted since the last save (None: unknown, the
        # whole stack is written; so is the first save, with no snapshot of ours yet)
        self._dirty: Optional[set] = None
        if self.kind == "labels":
            self._connect(layer.events.paint, self._painted)
            self._connect(layer.events.data, self._changed)
            # set_data fires on every re-slice (time slider) as well as on
            # refresh() after a model or an undo wrote into the array: a new
            # slice position alone is no change (a save per pause while
            # scrubbing read and hashed the whole stack, seconds for a long
            # video); otherwise only "maybe changed": the core skips the write
            # when the digest is unchanged.
            self._view = getattr(layer, "_slice_input", None)
            self._connect(layer.events.set_data, self._refreshed)
        else:
            self._connect(layer.events.data, self._changed)
            if "features" in layer.events.emitters:
                self._connect(layer.events.features, self._changed)

    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def disconnect_all(self) -> None:
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections.clear()
        self._timer.stop()

    # ------------------------------------------------------------ events
    def _changed(self, event=None) -> None:
        self._armed = True
        self._sure_changed = True
        self._dirty = None
        self._poke.emit()

    def _painted(self, event=None) -> None:
        """A brush stroke, fill or erase: napari's undo atoms say which frames."""
        self._armed = True
        self._paint_turn = True
        self._paint_turn_over.emit()
        frames = _frames_of_atoms(getattr(event, "value", None), self._layer())
        self._sure_changed = True
        if frames is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(frames)
        self._poke.emit()

    def _end_paint_turn(self) -> None:
        self._paint_turn = False

    def _refreshed(self, event=None) -> None:
        layer = self._layer()
        view = getattr(layer, "_slice_input", None) if layer is not None else None
        try:
            moved = view is not None and self._view is not None and bool(view != self._view)
        except Exception:  # napari changed its slice description: count every event
            moved = False
        self._view = view
        if moved or not self._armed:
            return
        # napari refreshes the layer right after the paint event of the same
        # edit (same event-loop turn); during a brush stroke (history blocked)
        # the paint event comes when the stroke ends. Any other refresh wrote
        # frames we cannot name (a model run, an undo): the next save compares every frame.
        if not self._paint_turn and not getattr(layer, "_block_history", False):
            self._dirty = None
        self._poke.emit()

    def finish_on_quit(self) -> Optional[threading.Thread]:
        """Quit: the timer and the save's signals will not run again, so
        pending changes are captured now and written by a thread after the
        running save; returns the thread to wait for (None: nothing to do)."""
        pending = self._timer.isActive() or self._pending
        self._timer.stop()
        self._pending = False
        running = self._thread
        layer = self._layer()
        if not pending or layer is None:
            return running
        try:
            data, kwargs = self._capture(layer)
        except Exception as exc:  # never raise while Qt quits
            log.warning("autosave of layer %r at quit failed: %s", layer.name, exc)
            return running
        return self._start_save(layer.name, data, kwargs, after=running)

    @property
    def busy(self) -> bool:
        return self._thread is not None or self._timer.isActive()

    # -------------------------------------------------------------- save
    def _fire(self) -> None:
        layer = self._layer()
        if layer is None:
            return
        if self._thread is not None:  # coalesce: one more save after the running one
            self._pending = True
            return
        try:
            data, kwargs = self._capture(layer)
        except Exception as exc:  # a layer we cannot read must not raise in Qt's event loop
            self._report(layer.name, exc)
            return
        self._sure_changed = False
        self._thread = self._start_save(layer.name, data, kwargs)

    def _start_save(self, name: str, data, kwargs: dict, after: Optional[threading.Thread] = None) -> threading.Thread:
        """Write the snapshot on a new thread (after ``after`` ends); its
        result comes back through ``_save_ended`` unless Qt is quitting."""
        folder, kind = self.folder, self.kind

        def save() -> None:
            if after is not None:
                after.join()
            try:
                t0 = time.perf_counter()
                path = core.save_layer_snapshot(folder, name, kind, data, **kwargs)
                result = ("ok", (path, time.perf_counter() - t0))
            except Exception as exc:  # reported as one warning, not a traceback
                result = ("error", (name, exc))
            if _QUITTING.is_set():
                if result[0] == "error":
                    log.warning("autosave of layer %r at quit failed: %s", *result[1])
                return
            try:
                self._save_ended.emit(result)
            except RuntimeError:  # the watcher went with its layer
                pass

        thread = threading.Thread(target=save, name=f"autosave {name!r}", daemon=False)
        thread.start()
        return thread

    def _on_save_ended(self, result) -> None:
        status, value = result
        if status == "ok":
            self._saved(value)
        else:
            self._dirty = None  # the snapshot on disk may be behind any frame: write them all next time
            self._report(*value)
        self._finished()

    def _capture(self, layer):
        """What the worker needs, copied on the GUI thread where cheap."""
        meta = {k: v for k, v in (layer.metadata or {}).items() if k != "autosave_path"}
        layer_kwargs: dict = {
            "scale": list(np.asarray(layer.scale, float)),
            "translate": list(np.asarray(layer.translate, float)),
            "axis_labels": list(layer.axis_labels),
        }
        kwargs: dict = {"metadata": core.to_jsonable(meta), "source": self.source, "layer_kwargs": layer_kwargs}
        if self.kind == "labels":
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
            # a memory-mapped stack is read from disk: copying it here would stall the GUI
            if not isinstance(data, np.memmap) and getattr(data, "nbytes", COPY_LIMIT_BYTES + 1) <= COPY_LIMIT_BYTES:
                data = np.array(data, copy=True)
            # a refresh alone is checked against the digest; a paint always writes
            kwargs["skip_unchanged"] = not self._sure_changed
            kwargs["changed_frames"] = None if self._dirty is None else sorted(self._dirty)
            self._dirty = set()  # strokes from now on go into the next save
            return data, kwargs
        features = layer.features
        feats = {str(c): features[c].to_numpy(copy=True) for c in features.columns}
        if self.kind == "points":
            return np.array(layer.data, dtype=float, copy=True), {**kwargs, "features": feats}
        layer_kwargs["ndim"] = int(layer.ndim)
        return [np.array(d, copy=True) for d in layer.data], {
            **kwargs, "features": feats, "shape_types": list(layer.shape_type),
            "edge_colors": np.array(layer.edge_color, copy=True) if len(layer.data) else None,
        }

    def _saved(self, result) -> None:
        path, seconds = result
        self.saves += 1
        self._warned = False
        layer = self._layer()
        if layer is not None:
            layer.metadata["autosave_path"] = str(path)
        self._timer.setInterval(max(self.interval_ms, int(BACKOFF * seconds * 1000)))

    def _finished(self) -> None:
        self._thread = None
        if self._pending:
            self._pending = False
            self._timer.start()

    def _report(self, name: str, exc: BaseException) -> None:
        log.warning("autosave of layer %r failed: %s", name, exc)
        if not self._warned:
            self._warned = True
            show_warning(f"Autosave of layer {name!r} failed: {exc}. Save it by hand (File > Save Selected Layers).")


def _frames_of_atoms(atoms, layer) -> Optional[set]:
    """The frames (first axis) a Labels paint event's undo atoms touched, or
    None when that cannot be told (another layout, a 2D layer)."""
    if layer is None or getattr(layer, "ndim", 0) != 3 or not isinstance(atoms, (list, tuple)):
        return None
    frames: set = set()
    for atom in atoms:
        key = getattr(atom, "slice_key", None)  # napari's masked paint atom: a bounding box of slices
        try:
            if key is not None:
                frames.update(range(*key[0].indices(int(layer.data.shape[0]))))
            else:  # the (indices, old values, new values) atom: index arrays
                frames.update(int(t) for t in np.unique(np.asarray(atom[0][0])))
        except (AttributeError, TypeError, IndexError, ValueError):
            return None
    return frames


def default_interval_ms() -> int:
    """``$SURGSEG_AUTOSAVE_INTERVAL_MS`` or :data:`DEFAULT_INTERVAL_MS`."""
    value = os.environ.get(ENV_INTERVAL, "").strip()
    if not value:
        return DEFAULT_INTERVAL_MS
    try:
        ms = int(float(value))
    except ValueError:
        ms = -1
    if ms < 0:
        log.warning("%s=%r is not a number of milliseconds; autosaving after %d ms", ENV_INTERVAL, value,
                    DEFAULT_INTERVAL_MS)
        return DEFAULT_INTERVAL_MS
    return ms


def watch_layer(layer, source: Optional[Any] = None, *, interval_ms: Optional[int] = None,
                edits_only: bool = False) -> Path:
    """Autosave ``layer`` (Labels, Points or Shapes) after each edit, into
    ``autosave_dir(source)``; ``source`` defaults to the layer's
    ``metadata["source_path"]``; ``interval_ms`` to :func:`default_interval_ms`;
    ``edits_only``: nothing is saved before the first paint or data change
    (a layer opened from a file). Idempotent; returns the snapshot folder
    and sets ``layer.metadata["autosave_path"]`` to the layer's snapshot file."""
    if interval_ms is None:
        interval_ms = default_interval_ms()
    if source is None:
        source = (layer.metadata or {}).get("source_path")
    source = str(source) if source else None
    old = _WATCHERS.get(layer)
    if old is not None:
        if old.source == source and old.interval_ms == int(interval_ms):
            return old.folder
        old.disconnect_all()
    watcher = _LayerAutosave(layer, source, interval_ms, edits_only=edits_only)
    _WATCHERS[layer] = watcher
    _finish_saves_on_quit()
    if source:  # the video the layer belongs to: saved files record it (provenance)
        layer.metadata["source_video"] = source
    layer.metadata["autosave_path"] = str(core.snapshot_path(watcher.folder, layer.name, watcher.kind))
    return watcher.folder


def request_save(layer) -> None:
    """Save ``layer`` soon although no paint event fired (e.g. only its
    metadata changed, or a model wrote into its array); no-op if unwatched."""
    watcher = _WATCHERS.get(layer)
    if watcher is not None:
        watcher._changed()


def unwatch_layer(layer) -> None:
    """Stop autosaving ``layer`` (a save already running still finishes)."""
    watcher = _WATCHERS.pop(layer, None)
    if watcher is not None:
        watcher.disconnect_all()


def watcher_of(layer) -> Optional[_LayerAutosave]:
    """The layer's autosave watcher (tests, status displays), or None."""
    return _WATCHERS.get(layer)


# ---------------------------------------------------------------------------
# Layers users add themselves (napari's "New labels layer", points, shapes)
# ---------------------------------------------------------------------------

# viewers whose new layers are autosaved
_VIEWERS: "weakref.WeakSet[Any]" = weakref.WeakSet()
# viewer -> the autosave folders already offered for restoring in it
_OFFERED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _unwrap(viewer):
    return getattr(viewer, "__wrapped__", viewer)  # widgets get napari's public-only proxy


def _video_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and (ly.metadata or {}).get("source_path")]


def source_for_layer(viewer, layer) -> Optional[str]:
    """The video a layer the user added belongs to: its own
    ``metadata["source_path"]``, the only video in the viewer, or the one
    video layer it lies on (same placement, and same frames for Labels);
    None when that is ambiguous (snapshots then go to the no-source folder)."""
    own = (layer.metadata or {}).get("source_path")
    if own:
        return str(own)
    videos = _video_layers(viewer)
    sources = {str(v.metadata["source_path"]) for v in videos}
    if len(sources) == 1:
        return sources.pop()
    scale, translate = np.asarray(layer.scale, float)[-3:], np.asarray(layer.translate, float)[-3:]
    shape = tuple(layer.data.shape[:3]) if isinstance(layer, Labels) else None
    on = {str(v.metadata["source_path"]) for v in videos
          if np.allclose(np.asarray(v.scale, float)[:3], scale)
          and np.allclose(np.asarray(v.translate, float)[:3], translate)
          and (shape is None or tuple(v.data.shape[:3]) == shape)}
    return on.pop() if len(on) == 1 else None


def _new_and_empty(layer) -> bool:
    """A layer the user just made to annotate a video: a Labels, Points or
    Shapes layer with a time axis holding nothing yet (a napari-made
    in-memory Labels too big to scan counts as new: napari's "New labels
    layer" button makes zeros; files opened from disk are on disk already)."""
    if getattr(layer, "ndim", 0) < 3 or not isinstance(layer, (Labels, Points, Shapes)):
        return False
    if isinstance(layer, Labels):
        data = layer.data
        if not isinstance(data, np.ndarray) or isinstance(data, np.memmap):
            return False
        return data.nbytes > COPY_LIMIT_BYTES or not data.any()
    return len(layer.data) == 0


def _on_inserted(event) -> None:
    layer = event.value
    ref = _VIEWER_OF_LIST.get(event.source)
    viewer = ref() if ref is not None else None
    if viewer is None or layer in _WATCHERS:
        return
    try:
        if _new_and_empty(layer):
            watch_layer(layer, source_for_layer(viewer, layer))
        elif _opened_masks(layer):
            # corrections to masks opened from a file: autosaved with the video they belong to
            watch_layer(layer, (layer.metadata or {}).get("source_video"), edits_only=True)
    except Exception as exc:  # never break napari's layer insertion
        log.warning("cannot autosave the new layer %r: %s", getattr(layer, "name", "?"), exc)


def _opened_masks(layer) -> bool:
    """A Labels layer our reader opened from a saved label TIFF or PNG-mask
    folder (``metadata["source_path"]`` is that file) to be corrected."""
    if not isinstance(layer, Labels):
        return False
    source = (layer.metadata or {}).get("source_path")
    if not source:
        return False
    path = Path(str(source))
    return path.suffix.lower() in (".tif", ".tiff") or path.is_dir()


# the layer list -> (a weak reference to) its viewer (the inserted event comes from the list)
_VIEWER_OF_LIST: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def watch_new_layers(viewer) -> None:
    """Autosave every Labels, Points and Shapes layer the user adds empty to
    ``viewer`` from now on (idempotent): corrections painted into a layer
    made with napari's own buttons are not lost when napari is killed."""
    viewer = _unwrap(viewer)
    if viewer is None or viewer in _VIEWERS:
        return
    _VIEWERS.add(viewer)
    _VIEWER_OF_LIST[viewer.layers] = weakref.ref(viewer)  # a strong value would keep the list (its key) alive
    viewer.layers.events.inserted.connect(_on_inserted)


# ---------------------------------------------------------------------------
# Restoring
# ---------------------------------------------------------------------------

#: restored layers are named "<name> (restored)"
RESTORED_SUFFIX = " (restored)"


def load_entries(entries, *, progress=None, cancel=None) -> list:
    """``core.load_snapshot`` of each entry (in a worker)."""
    out = []
    for i, entry in enumerate(entries):
        if cancel is not None:
            cancel.raise_if_cancelled()
        out.append(core.load_snapshot(entry))
        if progress is not None:
            progress(i + 1, len(entries), entry["name"])
    return out


def add_restored_layers(viewer, layer_data, source: Optional[str]) -> list:
    """Add loaded snapshots as "<name> (restored)" layers, autosaved again."""
    from napari.layers import Layer
    from napari.utils.notifications import show_info

    layers = []
    for data, kwargs, kind in layer_data:
        name = str(kwargs["name"])
        kwargs = {**kwargs, "name": name if name.endswith(RESTORED_SUFFIX) else name + RESTORED_SUFFIX}
        layer = viewer.add_layer(Layer.create(data, kwargs, kind))
        watch_layer(layer, source)
        layers.append(layer)
    show_info(f"Restored {len(layers)} autosaved layer(s)")
    return layers


def restore_snapshots(viewer, entries, source: Optional[str], *, owner=None):
    """Load ``entries`` (``core.list_snapshots``) in a worker and add them
    to ``viewer``; returns the worker."""
    from ._workers import run_in_worker

    worker, _ = run_in_worker(load_entries, list(entries), owner=owner, description="Restore autosave",
                              on_done=lambda layer_data: add_restored_layers(viewer, layer_data, source))
    return worker


def _changed_since(entries, source: str) -> list:
    """Names of the entries whose recorded video hash differs from the
    file's current one (when that is known without reading the file)."""
    from surgseg_core.provenance import cached_sha256

    now = cached_sha256(source)
    if now is None:
        return []
    return [e["name"] for e in entries
            if (e.get("provenance") or {}).get("source_video_sha256") not in (None, now)]


def offer_restore(viewer, source: Optional[str]):
    """When ``source`` (a video being opened) has autosaved layers that are
    not in ``viewer`` already, show a notification naming them with a
    "Restore" button (once per video and viewer); returns the notification
    (None when there is nothing to offer)."""
    from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

    viewer = _unwrap(viewer)
    if viewer is None or not source:
        return None
    offered = _OFFERED.setdefault(viewer, set())
    key = str(core.autosave_dir(source))
    if key in offered:
        return None
    try:
        entries = core.list_snapshots(core.autosave_dir(source))
    except Exception as exc:  # a damaged manifest must not stop the video from opening
        log.warning("cannot list the autosaved layers of %s: %s", source, exc)
        return None
    live = {str((ly.metadata or {}).get("autosave_path")) for ly in viewer.layers}
    entries = [e for e in entries if e["path"] not in live]
    if not entries:
        return None
    offered.add(key)
    changed = _changed_since(entries, source)
    names = ", ".join(repr(e["name"]) for e in entries[:3])
    if len(entries) > 3:
        names += f" and {len(entries) - 3} more"
    when = str(entries[0].get("saved_at", ""))[:19].replace("T", " ")
    message = (f"{Path(source).name}: {len(entries)} autosaved layer(s) from an earlier session ({names}; newest saved "
               f"{when} UTC). 'Restore' adds them as '... (restored)' layers; they stay listed in "
               "Plugins > SurgSeg > Corrections -> dataset > Restore autosaved corrections.")
    if changed:
        message += (f" WARNING: {', '.join(repr(n) for n in changed)} were saved for a different content of this "
                    "file (its SHA-256 changed since): check that they still match the video.")
    viewer_ref = weakref.ref(viewer)  # napari keeps every notification: never the viewer with it

    def restore(_notification) -> None:
        live_viewer = viewer_ref()
        if live_viewer is not None:
            restore_snapshots(live_viewer, entries, source)

    notification = Notification(message, severity=NotificationSeverity.INFO, actions=[("Restore", restore)])
    notification.surgseg_autosave_entries = entries  # what "Restore" loads (tests, scripts)
    notification_manager.dispatch(notification)
    return notification
