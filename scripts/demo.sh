#!/usr/bin/env bash
# What crysdistill does for a few hundred labelled crystals, end to end, on a bundled sample whose
# label no teacher saw: the bulk moduli of de Jong et al. (2015), 1,181 Materials Project crystals.
# It trains a plain CGCNN, a CGCNN started from an encoder pre-distilled from SevenNet-0 (shipped; it
# predicts without any teacher), and a CGCNN fed CHGNet's atom embeddings, and prints them beside
# CHGNet + a small head. Creates .venv if missing (the install is timed separately in the README).
# Everything goes to runs/demo/ (DEMO_OUT to change). 156–168 s on 2 idle cores after the install (measured twice).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
OUT="${DEMO_OUT:-runs/demo}"
rm -rf "$OUT"/cgcnn-* "$OUT"/head-*
mkdir -p "$OUT"
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac   # DEMO_OUT may be absolute or relative to the checkout
export CRYSDISTILL_CACHE="${CRYSDISTILL_CACHE:-$OUT/cache}"
DATA=(--data sample:elasticity --target log_kvrh)
SPLIT=(--train-size 400 --val-size 200 --test-size 581 --seed 0)
T0=$SECONDS

echo "== 1. the data: 1,181 crystals with elastic moduli (labels no teacher was trained on) =="
crysdistill data inspect sample:elasticity | sed -n '1,4p;/^labels/,$p'

echo
echo "== 2. the teachers installed (weights ship inside their packages; nothing is downloaded) =="
crysdistill teacher list
crysdistill students list | sed -n '/pre-distilled/,$p'

echo
echo "== 3. log10 bulk modulus from 400 labelled crystals: three CGCNNs on the same split =="
echo "-- plain CGCNN"
crysdistill train --student cgcnn "${DATA[@]}" "${SPLIT[@]}" --epochs 30 --out "$OUT/cgcnn-vanilla" threads=2
echo "-- CGCNN started from the encoder distilled from SevenNet-0 on 40,269 unlabelled crystals (no teacher needed)"
crysdistill train --student cgcnn --init cgcnn-sevennet "${DATA[@]}" "${SPLIT[@]}" --epochs 30 \
  --out "$OUT/cgcnn-distilled" threads=2
echo "-- CGCNN with CHGNet's five layers of atom embeddings as input (CHGNet runs at prediction too)"
crysdistill train --student cgcnn --teacher chgnet "${DATA[@]}" "${SPLIT[@]}" --epochs 30 \
  --out "$OUT/cgcnn-injected" distill.node_weight=0 'distill.inject_layers=[0,1,2,3,4]' threads=2

echo
echo "== 4. the references: CHGNet + a small head, and composition + the same head =="
crysdistill head --teacher chgnet "${DATA[@]}" "${SPLIT[@]}" --out "$OUT/head-chgnet" --threads 2
crysdistill head --features composition "${DATA[@]}" "${SPLIT[@]}" --out "$OUT/head-composition" --threads 2

echo
echo "== result: test MAE of log10 K_VRH (581 crystals, used once; every model chosen on validation) =="
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [("plain CGCNN", "cgcnn-vanilla", "no"), ("CGCNN from the SevenNet-0-distilled encoder", "cgcnn-distilled", "no"),
        ("CGCNN + CHGNet embeddings as input", "cgcnn-injected", "yes"),
        ("CHGNet + head (reference)", "head-chgnet", "yes"), ("composition + head (reference)", "head-composition", "no")]
base = json.load(open(f"{out}/cgcnn-vanilla/summary.json"))["test_mae"]
print(f"{'model':42s} {'test MAE':>9s} {'vs plain':>9s}  needs a teacher to predict")
for name, d, teacher in rows:
    s = json.load(open(f"{out}/{d}/summary.json"))
    print(f"{name:42s} {s['test_mae']:9.4f} {100 * (s['test_mae'] / base - 1):+8.1f} %  {teacher}")
PY
echo "(one seed on one split of a small set: docs/BENCHMARKS.md has the 3-seed evidence on larger test sets)"
echo "demo took $((SECONDS - T0)) s after the install"
