#!/usr/bin/env bash
# Issue 16's GPU checks in one script, for a lent GPU machine (the `device` tool: ~15 minutes of device
# time a session, 10 a command, so two parts). Prepare here first:
#     bash scripts/device_wheels.sh          (sam2, hydra, smp, pooch ... as wheels in .whl/, ~1 MB)
# then, through the device tool (each part ends well inside its timeout):
#     bash benchmarks/gpu_checks.sh propagation     carry [".whl"], timeout_s 590  (at most 9.5 min)
#     bash benchmarks/gpu_checks.sh training        carry [".whl"], timeout_s 560  (at most 8.5 min)
# (durations on the GPU unmeasured: each check has its own timeout, so a slow one costs its share only)
# Parts:
#   propagation  benchmarks/propagation.py --gpu: SAM2.1 tiny (also with its image encoder compiled) and small
#                at 1024 px, bf16, our engine vs SAM2VideoPredictor, FPS and peak GPU memory at 128 / 512 /
#                2048 frames (small: 128 / 512)
#   training     every method's training tests on the GPU in bf16 (tests/conftest.py's
#                SURGSEG_TEST_TRAIN_DEVICE / _PRECISION), DDP with 2 processes on one GPU, a real
#                out-of-memory error and the message the trainer gives for it
# Writes logs, summary.txt and BENCHMARKS.md (with the GPU tables) to $OUT (the device tool's) or
# gpu_results/. DEVICE=cpu runs the training part here as a dry run of this script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
PART=${1:-all}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import sam2, hydra, segmentation_models_pytorch, pooch" 2>/dev/null; then
    [ -d .whl ] || { echo "sam2 & co. missing and no .whl/: run scripts/device_wheels.sh here, carry .whl" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the package from the working tree (no install needed); tests/ for the toy method the trainer checks use
export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
export SAM2_BUILD_CUDA=0 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore MPLBACKEND=Agg
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, sam2, importlib.util as u; print('torch', torch.__version__, '| cuda',
torch.cuda.is_available() and torch.cuda.get_device_name(0), '| PyAV', bool(u.find_spec('av')))"
} 2>&1 | tee "$OUT/env.txt"

check() {  # check NAME SECONDS COMMAND...: run it, log to $OUT/NAME.log, one line in summary.txt
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name: $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: rc $rc, $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 4 "$OUT/$name.log"
}

if [ "$PART" = propagation ] || [ "$PART" = all ]; then
    # one round (device time is short); 480x640 frames so decoding is real work. SAM2.1-tiny also with its image
    # encoder compiled (max-autotune: the first process compiles for minutes, later ones reuse inductor's cache);
    # small without, at two lengths. Their tables: bench:propagation-gpu and bench:propagation-gpu-small.
    check propagation_tiny 420 "$PY" benchmarks/propagation.py --gpu --gpu-configs sam2.1_hiera_tiny --compile \
        --frames 128 512 2048 --rounds 1 --height 480 --width 640
    check propagation_small 150 "$PY" benchmarks/propagation.py --gpu --gpu-configs sam2.1_hiera_small \
        --frames 128 512 --rounds 1 --height 480 --width 640 --section-suffix=-small
    cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
fi

if [ "$PART" = training ] || [ "$PART" = all ]; then
    # every method's training tests, their runs moved to the GPU in bf16 (no -x: each outcome is recorded).
    # Without PyAV / imageio-ffmpeg there (they do not travel, see scripts/device_wheels.sh) the tests that write
    # or read synthetic mp4 clips fail with an ImportError (CPU dry run, 2026-12-05: 8 of 58); the kill -9 test
    # trains its first half in a subprocess, which the override does not reach: left out
    SURGSEG_TEST_TRAIN_DEVICE=$DEVICE SURGSEG_TEST_TRAIN_PRECISION=bf16 check training_bf16 260 \
        "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --timeout 240 -m "not gui and not realdata" -rf \
        --deselect tests/test_trainer.py::test_resume_after_kill9_reproduces_loss_curve \
        tests/test_trainer.py tests/test_liver_training.py tests/test_sam2_training.py \
        tests/test_f2paseg_training.py tests/test_rpsam2_training.py tests/test_tools_training.py
    # DDP: 2 processes, one GPU (they share it over gloo: NCCL refuses two ranks on one GPU)
    check ddp_2proc_1gpu 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m surgseg_core train \
        _toy_method:toy --run-dir "/tmp/gpu_checks_ddp_$$" --device "$DEVICE" --set epochs=2 --set n_train=16 \
        --set batch_size=4
    # a real out-of-memory error (a 4096-wide convolution on 1024 px images, batch 8: ~400 GB of activations)
    if [ "$DEVICE" = cuda ]; then
        check out_of_memory 120 "$PY" -m surgseg_core train _toy_method:toy --run-dir "/tmp/gpu_checks_oom_$$" \
            --device cuda --set epochs=1 --set n_train=8 --set size_px=1024 --set width=4096 --set batch_size=8
    fi
fi
echo "results in $OUT/"
