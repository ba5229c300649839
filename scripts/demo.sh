#!/usr/bin/env bash
# The main job end to end on the bundled sample (400 Materials Project structures with formation
# energies): inspect the data, pretrain a small teacher, then train a vanilla and a distilled CGCNN.
# Creates .venv if missing. Everything goes to runs/demo/ (DEMO_OUT to change). About 2-3 minutes on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
OUT="${DEMO_OUT:-runs/demo}"
rm -rf "$OUT/teacher" "$OUT/cgcnn-vanilla" "$OUT/cgcnn-distilled" "$OUT/cgcnn-distilled-default"
mkdir -p "$OUT"
export CRYSDISTILL_CACHE="${CRYSDISTILL_CACHE:-$ROOT/$OUT/cache}"
SPLIT=(--train-size 240 --val-size 60 --test-size 100 --seed 0)

echo "== 1. read the bundled sample, build and cache its crystal graphs =="
crysdistill data inspect sample

echo
echo "== 2. pretrain a small CrysGNN teacher on the sample (self-supervised, no labels used) =="
crysdistill pretrain --data sample --out "$OUT/teacher" --epochs 4 --seed 0
crysdistill teacher eval "$OUT/teacher/teacher.pt" --data sample

echo
echo "== 3. train CGCNN on formation energy: vanilla, then distilled from the demo teacher =="
crysdistill train --student cgcnn --data sample --target formation_energy_per_atom "${SPLIT[@]}" \
  --epochs 30 --out "$OUT/cgcnn-vanilla"
crysdistill train --student cgcnn --data sample --target formation_energy_per_atom "${SPLIT[@]}" \
  --epochs 30 --teacher "$OUT/teacher/teacher.pt" --out "$OUT/cgcnn-distilled"
echo "-- and distilled from the shipped teacher (pretrained on 42,391 structures)"
crysdistill train --student cgcnn --data sample --target formation_energy_per_atom "${SPLIT[@]}" \
  --epochs 30 --teacher default --out "$OUT/cgcnn-distilled-default"

echo
echo "== result (test split used once, model chosen on validation) =="
python - "$OUT" <<'PY'
import json, sys
for name in ("cgcnn-vanilla", "cgcnn-distilled", "cgcnn-distilled-default"):
    s = json.load(open(f"{sys.argv[1]}/{name}/summary.json"))
    print(f"{name:24s} test MAE {s['test_mae']:.4f} eV/atom  (val {s['val_mae']:.4f}, best epoch {s['best_epoch']}, "
          f"n_train {s['n_train']})")
PY
echo "A 4-epoch teacher on 400 structures is only a smoke test of the pipeline. 240 labels and 30 epochs"
echo "are too few for the differences to mean anything: docs/BENCHMARKS.md has the measured evidence."
