"""The plugin's guard against triton's LLVM meeting Mesa's in napari's
process (the napari-level crash is covered by test_fresh_napari.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from napari_surgseg._triton_guard import foreign_llvm_loaded

SRC = Path(__file__).resolve().parents[1] / "src"


def test_finds_mesa_llvm_among_the_mapped_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
    )
    assert foreign_llvm_loaded(str(maps)) == "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"
    maps.write_text("7f0000000000-7f0000001000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libGLX_mesa.so.0\n")
    assert foreign_llvm_loaded(str(maps)) is None
    assert foreign_llvm_loaded(str(tmp_path / "no-such-file")) is None  # no /proc: nothing to guard


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)


def test_torch_runs_without_triton_once_an_opengl_llvm_is_loaded():
    """An LLVM appears after the plugin was imported (a script importing the
    plugin before creating its viewer): torch's lazy triton imports then find
    triton absent, torchvision.ops and torch._dynamo still import, and the
    answer stays the same for importlib's find_spec (which torch also uses)."""
    proc = _run("""
        import importlib.util, sys
        import napari_surgseg._triton_guard as guard
        guard.install()
        assert sys.modules.get("triton", "absent") is not None  # no LLVM yet: nothing refused
        guard.foreign_llvm_loaded = lambda: "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"  # OpenGL came up
        import torchvision.ops, torch._dynamo  # the path the liver widget's first inference took
        from torch.utils._triton import has_triton_package
        assert not has_triton_package()
        assert importlib.util.find_spec("triton") is None
        try:
            import triton
        except ImportError as exc:
            print("refused:", exc)
        import torch
        net = torch.nn.Conv2d(3, 2, 3)
        net(torch.ones(1, 3, 8, 8)).sum().backward()
        torch.optim.AdamW(net.parameters()).step()
        print("torch ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: " in proc.stdout  # the hook's message or, after it, the absent marker's
    assert "torch ok" in proc.stdout


def test_nothing_changes_without_a_foreign_llvm():
    proc = _run("""
        import sys
        import napari_surgseg._triton_guard as guard
        guard.foreign_llvm_loaded = lambda: None
        guard.install()
        try:
            import triton
            print("triton", triton.__version__)
        except ImportError as exc:  # a CPU-only torch without triton: also fine
            print("no triton installed:", exc)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not loaded into this napari process" not in proc.stdout
