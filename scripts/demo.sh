#!/usr/bin/env bash
# The main job end to end on the bundled sample (400 Materials Project structures).
# Creates .venv if missing. Outputs go to runs/demo/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
OUT="${DEMO_OUT:-runs/demo}"
mkdir -p "$OUT"
export CRYSDISTILL_CACHE="${CRYSDISTILL_CACHE:-$ROOT/$OUT/cache}"

echo "== 1. read the bundled sample, build and cache its crystal graphs =="
crysdistill data inspect sample
