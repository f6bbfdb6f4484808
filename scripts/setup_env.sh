#!/usr/bin/env bash
# Set up everything napari-surgseg needs on a fresh Debian/Ubuntu machine:
# system libraries for napari under Xvfb, a virtual environment in .venv, and
# the package with its test extras. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="ffmpeg xvfb xauth libxkbcommon-x11-0 libxkbcommon0 libxcb-icccm4 libxcb-image0 \
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
libxcb-cursor0 libxcb-xkb1 libegl1 libgl1 libglx-mesa0 libdbus-1-3 libfontconfig1"

missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# a C compiler and Python's headers build the liver post-processing kernels (Cython)
PY=${PYTHON:-python3}
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
if ! "$PY" -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
  missing="$missing python3-dev"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] missing system packages; install them with:" >&2
    echo "    sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when the dependency list or the compiled kernels changed.
stamp=.venv/.surgseg-installed
want=$(cat pyproject.toml setup.py src/surgseg_core/methods/liver/_kernels.pyx | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing Python packages (torch, sam2, napari, ...); first time takes a few minutes"
  .venv/bin/python -m pip install -q --upgrade pip
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q -e ".[testing]"
  echo "$want" > "$stamp"
fi
# the liver post-processing kernels are optional at install (no compiler: numpy
# versions); say so here rather than only in a slower benchmark
.venv/bin/python -c "import surgseg_core.methods.liver._kernels" 2>/dev/null \
  || echo "[setup] warning: compiled kernels not built (no C compiler?); liver post-processing uses numpy" >&2
echo "[setup] ready: .venv"
