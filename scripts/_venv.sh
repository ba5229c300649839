# Sourced by demo.sh and test.sh: create .venv if it is missing and install the project into it.
# Needs only python3 (>= 3.10). torch is pinned here to the CPU wheel (pyproject keeps a range).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_PIN="${CRYSDISTILL_TORCH:-torch==2.13.0}"
if [ ! -x "$PY" ]; then
  echo "creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.crysdistill-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-${1:-base}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing crysdistill into $VENV (first run takes a few minutes)"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet "$TORCH_PIN"
  if [ "${1:-base}" = "test" ]; then
    "$PY" -m pip install --quiet -e "$ROOT[test]"
  else
    "$PY" -m pip install --quiet -e "$ROOT"
  fi
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
