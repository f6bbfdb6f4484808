"""Temporary files of killed atomic writes (issue 15): the target keeps its
previous content, and the next atomic write next to it removes the orphan;
a live writer's temporary file is never touched."""
from __future__ import annotations

import os
import time

from _kill_helpers import kill, start, wait_for

from surgseg_core import atomic
from surgseg_core.atomic import atomic_write_bytes, remove_orphans

# Writes 1 MB into the temporary file, says where it is, then waits for a
# "go" file before finishing.
WRITER = """
import sys, time
from pathlib import Path
from surgseg_core.atomic import atomic_path
target, flag, go = map(Path, sys.argv[1:4])
with atomic_path(target) as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"x" * 1_000_000)
        fh.flush()
        flag.write_text(str(tmp))
        while not go.exists():
            time.sleep(0.01)
        fh.write(b"end")
"""


def test_a_killed_writer_keeps_the_old_file_and_the_next_write_removes_its_temp(tmp_path):
    folder = tmp_path / "out"
    target = folder / "video.mp4"
    atomic_write_bytes(target, b"previous")
    proc = start(WRITER, target, tmp_path / "flag", tmp_path / "go", cwd=tmp_path)
    tmp = wait_for(proc, tmp_path / "flag")
    kill(proc)
    orphan = folder / os.path.basename(tmp)
    assert orphan.is_file() and orphan.stat().st_size == 1_000_000  # what SIGKILL leaves
    assert f".tmp-{proc.pid}@" in orphan.name  # the name says who wrote it
    assert target.read_bytes() == b"previous"

    atomic_write_bytes(target, b"next")
    assert target.read_bytes() == b"next"
    assert sorted(p.name for p in folder.iterdir()) == ["video.mp4"]  # the orphan is gone


def test_a_live_writers_temp_survives_another_write(tmp_path):
    target = tmp_path / "labels.tif"
    proc = start(WRITER, target, tmp_path / "flag", tmp_path / "go", cwd=tmp_path)
    try:
        tmp = wait_for(proc, tmp_path / "flag")
        atomic_write_bytes(target, b"mine")  # a second writer, same target
        assert remove_orphans(tmp_path) == []
        assert os.path.getsize(tmp) == 1_000_000
        (tmp_path / "go").touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            kill(proc)
    assert target.read_bytes() == b"x" * 1_000_000 + b"end"  # the last rename wins, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag", "go", "labels.tif"]


def test_which_temporary_files_are_removed(tmp_path, monkeypatch):
    proc = start("pass", cwd=tmp_path)
    proc.communicate()
    dead, me = proc.pid, os.getpid()
    host = atomic._HOST
    names = {
        f".a.png.tmp-{dead}@{host}~abc123.png": False,  # writer gone: removed
        f".b.png.tmp-{me}@{host}~abc123.png": True,  # this process (another thread may write it)
        f".c.png.tmp-{dead}@{host}x~abc123.png": True,  # another host: cannot ask, kept
        ".d.png.tmp-jgtedqvk.png": True,  # unnamed (older version), recent: kept
        ".e.png.tmp-jgtedqvk.png": False,  # unnamed, untouched for two days: removed
        ".notes.txt": True,  # the user's hidden files
        "f.tmp-1@x~y": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"1")
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / ".e.png.tmp-jgtedqvk.png", (old, old))
    assert remove_orphans(tmp_path, "b.png") == []  # only the named target's files
    removed = remove_orphans(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, keep in names.items() if keep)


def test_a_dead_writers_pid_reused_by_a_newer_process_does_not_keep_its_temp(tmp_path, monkeypatch):
    """The PID in a temporary file's name now belongs to another (live) process:
    if that process started after the file was created, it is not the writer, and the
    file is an orphan. A process that started before the file (the writer) keeps it."""
    proc = start("import time; time.sleep(60)", cwd=tmp_path)  # a live process, started before the files
    try:
        host = atomic._HOST
        kept = tmp_path / f".a.png.tmp-{proc.pid}@{host}~abc123.png"
        kept.write_bytes(b"1")
        assert remove_orphans(tmp_path) == []  # its (possible) writer is alive and older than the file
        created = os.stat(kept).st_ctime
        # the same PID, but a process that started well after the file was created: a reused PID
        monkeypatch.setattr(atomic, "_process_start", lambda pid: created + 60)
        assert remove_orphans(tmp_path) == [kept]
    finally:
        kill(proc)
