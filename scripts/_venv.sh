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
  # pip's notes about this machine's package mirrors are noise to a user: keep its real warnings and errors
  quiet() { PYTHONWARNINGS=ignore "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }
  echo "installing crysdistill into $VENV (first run takes a few minutes)"
  echo "  [1/3] pip"
  quiet "$PY" -m pip install --quiet --upgrade pip
  echo "  [2/3] $TORCH_PIN (CPU build where available)"
  quiet "$PY" -m pip install --quiet "$TORCH_PIN"
  echo "  [3/3] crysdistill with torch-geometric, pymatgen, jarvis-tools, alignn, chgnet, sevenn${1:+ ($1 extras)}"
  if [ "${1:-base}" = "test" ]; then
    quiet "$PY" -m pip install --quiet -e "$ROOT[test]"
  else
    quiet "$PY" -m pip install --quiet -e "$ROOT"
  fi
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
