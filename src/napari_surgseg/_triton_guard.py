"""Keep triton out of a napari process whose OpenGL already loaded LLVM.

Under Mesa's software OpenGL (llvmpipe: Xvfb, most virtual machines and
remote desktops) the GL driver loads ``libLLVM``; triton ships its own LLVM,
and loading it into the same process afterwards segfaults (import of triton
itself, reached lazily through torchvision.ops -> torch._dynamo on the first
inference). Loading triton *before* the GL context is safe, but the plugin
is imported only after napari has shown its window (``napari``, ``napari
clip.mp4``, ``python -m napari``), so that order cannot be arranged here.

The plugin never needs triton in napari's process (inference runs eager;
training runs in its own process), and torch treats an unimportable triton
as absent. So an import hook refuses ``triton`` exactly when a foreign LLVM
is already mapped into the process and triton is not loaded yet; the check
runs at import time, so a script that imports the plugin before creating
its viewer is covered too. Where no such LLVM is loaded (GPU drivers without
LLVM, macOS, Windows), nothing changes.
"""
from __future__ import annotations

import importlib.abc
import re
import sys
from typing import Optional

# Shared objects that carry an LLVM of their own: Mesa's libLLVM (and its
# gallium drivers, in case LLVM is linked into them statically).
_LLVM_LIBS = re.compile(r"/(libLLVM[^/\s]*|libgallium[^/\s]*|[^/\s]*swrast_dri[^/\s]*)\.so")


def foreign_llvm_loaded(maps_path: str = "/proc/self/maps") -> Optional[str]:
    """Path of an LLVM-carrying library mapped into this process (Linux), else None."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                match = _LLVM_LIBS.search(line)
                if match:
                    return line.split()[-1]
    except OSError:  # no /proc (macOS, Windows): no Mesa llvmpipe to clash with
        return None
    return None


class TritonGuard(importlib.abc.MetaPathFinder):
    """``sys.meta_path`` hook: ``import triton`` fails (as if not installed)
    while a foreign LLVM is loaded and triton is not."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "triton" and not fullname.startswith("triton."):
            return None
        if "triton" in sys.modules:  # already loaded (before any GL): nothing left to clash
            return None
        lib = foreign_llvm_loaded()
        if lib is None:
            return None
        # Marked absent for good: ``importlib.util.find_spec("triton")`` (which
        # torch also uses) then answers None instead of reaching this hook.
        sys.modules["triton"] = None  # type: ignore[assignment]
        raise ModuleNotFoundError(
            f"triton is not loaded into this napari process: {lib} (OpenGL's LLVM) is already loaded "
            "and triton's own LLVM would crash it",
            name=fullname,
        )


def install() -> None:
    """Put the guard first on ``sys.meta_path`` (once per process) and mark
    triton absent right away when a foreign LLVM is already loaded."""
    if not any(isinstance(f, TritonGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, TritonGuard())
    if "triton" not in sys.modules and foreign_llvm_loaded() is not None:
        sys.modules["triton"] = None  # type: ignore[assignment]
