#!/usr/bin/env bash
# The whole test suite (slow end-to-end tests included). Creates .venv if missing.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"  or  -k cache
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test
cd "$ROOT"
ruff check crysdistill adapters tests scripts
export CRYSDISTILL_CACHE="${CRYSDISTILL_CACHE:-$(mktemp -d)}"
python -m pytest -q "$@"
