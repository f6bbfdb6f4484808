"""Shared by the benchmark scripts: each owns one section of BENCHMARKS.md
between ``<!-- bench:NAME -->`` markers, so several benchmarks share the file."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

BENCH_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(name: str, text: str, path: Path = BENCH_MD) -> None:
    """Replace (or append) section ``name`` of BENCHMARKS.md, atomically."""
    from surgseg_core.atomic import atomic_write_text

    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, new)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_note(start: float, end: float) -> str:
    """How busy the machine was while measuring, in words a table can carry."""
    cpus = os.cpu_count() or 1
    busy = max(start, end) > cpus * 0.75 + 0.5
    return (f"load average {start:.1f} at start, {end:.1f} at end ("
            + ("other jobs ran: absolute times are inflated, the ratios measured side by side less so)" if busy
               else "no other job ran)"))
