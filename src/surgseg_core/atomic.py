"""Atomic file writes: write to a temporary file in the same folder, fsync,
then rename over the target, so a crash never leaves a half-written
checkpoint, label file or export behind."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.tmp-", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain
    # open() would (shared lab folders must stay readable).
    os.chmod(tmp_path, 0o666 & ~_current_umask())
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
        if full:
            kept = " (the previous file is kept)" if target.exists() else ""
            raise WriteError(f"cannot write {target}: the disk is full{kept}; free space on "
                             f"{target.parent} or write elsewhere") from exc
        raise


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
