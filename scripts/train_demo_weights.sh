#!/usr/bin/env bash
# Reproduce every bundled demonstration model in sample_data/ (CPU, about an
# hour on 2 cores; each model card records the exact command, seed, time and
# hardware of its run). Later models start from the demo SAM2, so it comes first.
#   bash scripts/train_demo_weights.sh [WORK_DIR]      (default: runs/demo_weights)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
PY=.venv/bin/python
WORK=${1:-runs/demo_weights}
mkdir -p "$WORK"

# SAM2 from scratch on synthetic instrument clips (20-minute budget: single frames, then clips)
$PY -m surgseg_core.methods.sam2.demo "$WORK/sam2" --max-minutes 20 --recipe staged48-enter15 \
    --export sample_data/sam2_demo/surgseg-demo-sam2.safetensors
# F2PASeg: the demo SAM2 fine-tuned on synthetic anatomy clips
$PY -m surgseg_core.methods.f2paseg.demo "$WORK/f2paseg" --max-minutes 16 \
    --export sample_data/f2paseg_demo/surgseg-demo-f2paseg.safetensors
# RP-SAM2: a shift block on the frozen demo SAM2
$PY -m surgseg_core.methods.rpsam2.demo "$WORK/rpsam2" --max-minutes 10 \
    --export sample_data/rpsam2_demo/surgseg-demo-rpsam2.safetensors
# Tool landmarks: coarse, then refinement with the demo SAM2 as the mask prior
$PY -m surgseg_core.methods.tools.demo "$WORK/tools" --max-minutes 15 \
    --export sample_data/tools_demo/surgseg-demo-tools.safetensors
echo "demo weights and model cards written under sample_data/*_demo/"
