#!/usr/bin/env bash
# Set up everything and run the offline demo on the bundled sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/surgseg demo --out runs/demo "$@"
