#!/usr/bin/env bash
# Regenerate sample_data/ (synthetic clip + liver scene) from the deterministic generator.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m surgseg_core.synth sample-data sample_data "$@"
