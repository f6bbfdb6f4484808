"""Kill a real subprocess at a moment the test chooses: the child runs a
script that creates a signal file at that moment and then waits (for a
"go" file that never comes, or forever); the test waits for the signal
file and sends SIGKILL. No sleeps decide where the kill lands."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update(extra)
    return env


def start(script: str, *args: str, cwd: Path, **env: str) -> subprocess.Popen:
    """Run ``script`` (Python source) in a new process group."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=cwd,
                            env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, flag: Path, timeout: float = 120.0) -> str:
    """Wait until the child creates ``flag`` (returns its text); fail with the
    child's output if it exits first."""
    end = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child exited ({proc.returncode}) before {flag.name}:\n{out.decode()}\n{err.decode()}")
        if time.monotonic() > end:
            kill(proc)
            raise AssertionError(f"child did not reach {flag.name} within {timeout} s")
        time.sleep(0.01)
    time.sleep(0.01)  # the flag is written whole before the child waits; let the write finish
    return flag.read_text()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything it started (an encoder), then reap it
    (a zombie would still count as a live writer)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
