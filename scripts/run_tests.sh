#!/usr/bin/env bash
# Set up everything and run the whole test suite headless (napari under Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export QT_QPA_PLATFORM=xcb          # a real X server (Xvfb), not offscreen: napari needs OpenGL
export SAM2_BUILD_CUDA=0
export MPLBACKEND=Agg
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests --durations=30 "$@"  # the slowest tests: the suite must stay under 20 minutes
