#!/usr/bin/env bash
# Wheels that a lent GPU machine (the `device` tool; its python3 is 3.12 with torch, without sam2, hydra,
# segmentation-models-pytorch, pooch or PyAV) needs to run benchmarks/gpu_checks.sh, written to .whl/
# (git-ignored; name .whl in the tool's carry). Same versions as this machine's .venv. PyAV is left out:
# its 35 MB wheel and the repo's ~42 MB pass the 64 MiB a call carries; the GPU checks read JPEG folders.
#   bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
pins=()
for name in hydra-core omegaconf antlr4-python3-runtime iopath segmentation-models-pytorch pooch platformdirs; do
    pins+=("$name==$(version "$name")")
done
# all pure Python (py3-none-any wheels; those published as source only, like antlr4 4.9.3 and sam2, are built
# here; sam2 without its optional CUDA extension)
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "${pins[@]}" "sam2==$(version sam2)"
if ls .whl | grep -v -- '-py3-none-any.whl$\|-py2.py3-none-any.whl$'; then
    echo "the wheels above are not pure Python: they may not install on the GPU machine's Python 3.12" >&2
fi
du -sh .whl
ls .whl
