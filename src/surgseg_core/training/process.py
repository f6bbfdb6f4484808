"""Start, watch and stop a training run in a child process (no Qt here:
the napari widget polls :meth:`TrainingProcess.poll` from a QTimer)."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..atomic import atomic_write_text
from ..config import plain_config

PathLike = Union[str, os.PathLike]


class TrainingProcess:
    """``python -m surgseg_core.training.worker`` with events on a queue.

    ``poll()`` returns the events received since the last call (dicts, see
    :mod:`.worker`); ``stop()`` asks for a clean stop with a checkpoint;
    ``kill()`` ends it at once (last.pt from the previous epoch survives).
    """

    def __init__(
        self,
        method: str,
        config: Mapping[str, Any],
        run_dir: PathLike,
        *,
        resume: bool = False,
        register: Optional[Mapping[str, Any]] = None,
        sys_path: Optional[Sequence[str]] = None,
        nice: int = 10,
        num_threads: Optional[int] = None,
        python: str = sys.executable,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        job = {
            "method": method,
            "config": plain_config(config),
            "run_dir": str(self.run_dir),
            "resume": resume,
            "register": dict(register) if register is not None else None,
            "sys_path": list(sys_path or []),
            "nice": nice,
            "num_threads": num_threads,
        }
        fd, job_path = tempfile.mkstemp(prefix=".job-", suffix=".json", dir=self.run_dir)
        os.close(fd)
        self.job_path = Path(job_path)
        atomic_write_text(self.job_path, json.dumps(job))
        self.events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.stderr_tail: List[str] = []
        self._proc = subprocess.Popen(
            [python, "-m", "surgseg_core.training.worker", str(self.job_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # stray library output
            if isinstance(event, dict):
                self.events.put(event)

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.stderr_tail.append(line.rstrip())
            del self.stderr_tail[:-50]

    def poll(self) -> List[Dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll()

    def finished(self) -> bool:
        """True once the process has exited and all its output was read."""
        return not self.running and not any(t.is_alive() for t in self._readers)

    def stop(self) -> None:
        if self.running and self._proc.stdin is not None:
            try:
                self._proc.stdin.write("stop\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def kill(self) -> None:
        if self.running:
            self._proc.kill()

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._proc.wait(timeout)
        for t in self._readers:
            t.join(timeout=5)
        return code

    def cleanup(self) -> None:
        try:
            self.job_path.unlink()
        except OSError:
            pass
