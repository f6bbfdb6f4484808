"""Atomic file writes: write to a temporary file in the same folder, fsync,
then rename over the target, so a crash never leaves a half-written
checkpoint, label file or export behind.

A writer killed with SIGKILL cannot remove its temporary file. Temporary
names therefore say who wrote them (``.video.mp4.tmp-<pid>@<host>~<random>.mp4``)
and every atomic write first removes the temporary files in its folder whose
writer process on this host has gone (:func:`remove_orphans`); a live
writer's file, or one from another host, is never touched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from .errors import Cancelled, WriteError

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces
    ``target`` atomically, on error it is removed and ``target`` is untouched.

    ``suffix`` defaults to the target's own suffix so libraries that pick a
    format by extension (tifffile, imageio) still work on the temp path.
    Writers check that the new file is complete inside the block (an
    encoder that died, a short write) and raise: the old file stays. A full
    disk becomes a :class:`WriteError` that says so.
    """
    target = Path(target)
    tmp_path = _make_temp(target, suffix)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        _set_final_mode(tmp_path, target)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        full = disk_full(exc, target.parent)  # before the temporary file frees its space
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        error = _write_failure(exc, target, full, " (the previous file is kept)" if target.exists() else "")
        if error is not None:
            raise error from exc
        raise


def _write_failure(exc: BaseException, target: Path, full: bool, kept: str) -> Optional[WriteError]:
    """The user's error for a failed write of ``target`` (None: re-raise
    ``exc``): a full disk says what was kept, else :func:`write_error`."""
    if full:
        return WriteError(f"cannot write {target}: the disk is full{kept}; free space on "
                          f"{target.parent} or write elsewhere")
    return write_error(exc, target) if isinstance(exc, OSError) else None


def _make_temp(target: Path, suffix: Optional[str] = None) -> Path:
    """An empty temporary file next to ``target``, named after its writer."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_folder_now_and_then(target.parent)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}{_TMP_MARK}{os.getpid()}@{_HOST}~",
            suffix=suffix if suffix is not None else target.suffix, dir=target.parent
        )
    except OSError as exc:  # a read-only or unwritable folder, a full disk: say which folder and what to do
        error = write_error(exc, target)
        if error is None:
            raise
        raise error from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain
    # open() would (shared lab folders must stay readable).
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    return tmp_path


def atomic_write_group(files: Sequence[Tuple[PathLike, Union[str, bytes]]],
                       remove: Sequence[PathLike] = ()) -> List[Path]:
    """Write several files that make one result, the LAST of them its
    completion marker (e.g. a table, then the metrics JSON).

    Every file is first written whole to its temporary name and synced: a
    full disk or any error there changes nothing (the previous files stay).
    Then the previous marker is removed, the other files are renamed into
    place, ``remove`` (files of the previous result this one does not
    replace) deleted, and the marker renamed last: a kill between the renames
    leaves files without their marker, which reads as unfinished, never an
    old marker next to new files."""
    if not files:
        return []
    targets = [Path(t) for t, _ in files]
    temps: List[Path] = []
    try:
        for target, (_, data) in zip(targets, files):
            tmp = _make_temp(target)
            temps.append(tmp)
            with open(tmp, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else bytes(data))
                fh.flush()
                os.fsync(fh.fileno())
            _set_final_mode(tmp, target)
    except BaseException as exc:
        full = disk_full(exc, targets[len(temps) - 1].parent if temps else None)
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if isinstance(exc, WriteError):
            raise
        error = _write_failure(exc, targets[max(0, len(temps) - 1)], full, " (the previous files are kept)")
        if error is not None:
            raise error from exc
        raise
    with contextlib.suppress(FileNotFoundError):
        targets[-1].unlink()  # the old marker first: from here on the folder reads as unfinished
    for tmp, target in zip(temps[:-1], targets[:-1]):
        os.replace(tmp, target)
    for old in remove:
        with contextlib.suppress(FileNotFoundError):
            Path(old).unlink()
    for folder in {t.parent for t in targets[:-1]}:
        _fsync_dir(folder)
    os.replace(temps[-1], targets[-1])
    _fsync_dir(targets[-1].parent)
    return targets


# errno values that mean "this folder cannot be written" (not a bug of ours)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(exc: BaseException, path: Optional[PathLike] = None) -> Optional[WriteError]:
    """The user's one-line :class:`WriteError` for an OSError that says the
    disk is full or the folder cannot be written (read-only file system, no
    permission), naming the folder and the fix; None for any other error.
    The one place that words these: :func:`atomic_path` and the CLI's
    error handler (for writes that do not go through it) both use it."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT) + _UNWRITABLE:
        return None
    name = exc.filename if exc.filename is not None else path
    target = Path(name) if name is not None else None
    folder = _existing_folder(target) if target is not None else None
    what = f"cannot write {target}" if target is not None else "cannot write"
    where = f" on {folder}" if folder is not None else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"{what}: the disk is full; free space{where} or write elsewhere")
    if exc.errno == errno.EROFS:
        return WriteError(f"{what}: {folder or 'its folder'} is on a read-only file system; choose a writable "
                          "output folder (or remount it read-write)")
    return WriteError(f"{what}: no permission to write in {folder or 'its folder'}; choose a folder you can "
                      "write to (or change its permissions)")


def _existing_folder(path: Path) -> Optional[Path]:
    """The nearest folder of ``path`` (itself, if a folder) that exists: the
    one a failed write or mkdir could not write into."""
    probe = path
    for _ in range(256):
        try:
            if probe.is_dir():
                return probe
        except OSError:
            pass
        if probe.parent == probe:
            return None
        probe = probe.parent
    return None


# ---------------------------------------------------------------- orphans
_TMP_MARK = ".tmp-"
# The host part of temporary names: characters safe in file names, and short
# (the whole name must stay under 255 bytes).
_HOST = re.compile(r"[^A-Za-z0-9.-]+").sub("_", socket.gethostname() or "host")[:32] or "host"
# ".<target name>.tmp-<pid>@<host>~<random><suffix>"
_OWNED = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]*)~")
# Names of temporary files before writers were named (".<target>.tmp-<8 random><suffix>"):
# no owner to ask, so removed only once nobody has written to them for a day.
_LEGACY = re.compile(r"^\.(?P<target>.+)\.tmp-[a-z0-9_]{8}(\.[^.]*)?$")
LEGACY_AGE_S = 24 * 3600
# Every atomic write lists its folder, except in big folders (a tracker
# writing thousands of frames into one): those at most once a minute per process.
_RESCAN_S = 60.0
_BIG_FOLDER = 256
_cleaned: dict = {}
_cleaned_lock = threading.Lock()


def _process_start(pid: int) -> Optional[float]:
    """When process ``pid`` started (epoch seconds), None if unknown."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


#: A process that started this long after a temporary file was created cannot have created it.
_PID_REUSE_SLACK_S = 2.0


def _writer_alive(pid: int, host: str, created: Optional[float] = None) -> bool:
    """Whether the process that named a temporary file may still write it.
    Another host's process cannot be asked: it counts as alive. A process
    with that PID that started after the file was created (``created``: the
    file's ctime, which copying or ``utime`` cannot set back) is a new
    process that reuses a dead writer's PID."""
    if host != _HOST:
        return True
    if pid == os.getpid():
        return True  # this process: another thread's write in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return True
    if created is not None:
        started = _process_start(pid)
        if started is not None and started > created + _PID_REUSE_SLACK_S:
            return False
    return True


def remove_orphans(folder: PathLike, target_name: Optional[str] = None) -> List[Path]:
    """Remove temporary files of atomic writes in ``folder`` (of
    ``target_name`` only, if given) whose writer is gone: killed before it
    could clean up. Returns the removed paths. Files of live writers (this
    or another process on this host), of other hosts, and unnamed legacy
    files touched within the last day are kept."""
    return _remove_orphans(Path(folder), target_name)[0]


def _remove_orphans(folder: Path, target_name: Optional[str]) -> Tuple[List[Path], int]:
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed, 0
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or _TMP_MARK not in name:
            continue
        owned = _OWNED.match(name)
        if owned is not None:
            if target_name is not None and owned["target"] != target_name:
                continue
            try:
                created = entry.stat(follow_symlinks=False).st_ctime
            except OSError:
                continue
            if _writer_alive(int(owned["pid"]), owned["host"], created):
                continue
        else:
            legacy = _LEGACY.match(name)
            if legacy is None or (target_name is not None and legacy["target"] != target_name):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < LEGACY_AGE_S:
                    continue
            except OSError:
                continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # removed by someone else meanwhile, or not ours to remove
            continue
    return removed, len(entries)


def _clean_folder_now_and_then(folder: Path) -> None:
    key = str(folder.absolute())
    now = time.monotonic()
    with _cleaned_lock:
        last = _cleaned.get(key)
        if last is not None and now - last < _RESCAN_S:
            return
    size = _remove_orphans(folder, None)[1]
    if size > _BIG_FOLDER:
        with _cleaned_lock:
            _cleaned[key] = now


def disk_full(exc: BaseException, folder: Optional[Path] = None) -> bool:
    """Whether ``exc`` (or its cause) is "no space left", or a failure while
    ``folder``'s disk has (almost) no free space left (encoders report it
    only as a broken pipe or a short file)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit, Cancelled)):
        try:
            import shutil

            return shutil.disk_usage(folder).free < 64 * 1024
        except OSError:
            return False
    return False


def atomic_write_bytes(target: PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(target)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _current_umask()


def _set_final_mode(tmp: Path, target: Path) -> None:
    """mkstemp makes 0600 files; give the result the mode a normal write would
    (the old file's mode, or 0666 minus the umask) so shared exports stay readable."""
    with contextlib.suppress(OSError):
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not supported on every OS/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
