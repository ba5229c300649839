#!/usr/bin/env python
"""What does each teacher's frozen embedding know? Ridge, kernel ridge and an MLP head, every teacher, one run per target.

For each target and training-set size, on the split ``scripts/benchmark.py`` trains its students
on (split seed 0, the same validation and test structures), this fits three regressors on
per-structure features and tests each once:

* ``ridge``: the linear probe (penalty chosen on validation);
* ``krr``: kernel ridge regression (kernel, penalty and width chosen on validation; NEGNN's
  descriptor baseline, ``crysdistill krr``);
* ``head``: the teacher + head reference of ``crysdistill head`` (an MLP grid and ridge, chosen on
  validation);

on these features:

* each teacher's embedding (per-structure mean of every layer's L2-normalised atom embeddings,
  concatenated; the cache of ``crysdistill embed``);
* the teacher's **random twin** (:meth:`TeacherAdapter.random_twin`: the same architecture and
  graph builder with every weight tensor redrawn at random, seed 0), the control for what the
  architecture alone gives;
* composition (element fractions and moments of the element features; no structure);
* the training mean.

Only structures every listed teacher can embed are kept (the count dropped is printed), so every
row of a target sees the same structures. Results go to ``OUT/results.csv`` (one row per target,
size, features and method; rows already there are skipped, so the run resumes) and
``OUT/summary.md``. Example (the command behind docs/teachers.md):

    python scripts/bench_heads.py --targets band_gap,log_kvrh,log_gvrh,last_phdos_peak --sizes 250,1000 \\
        --teachers chgnet,sevennet,default,crysgnn,mp-eform --out runs/heads
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import DATA, LABELS, SPLIT_SEED  # noqa: E402  (the benchmark's files, splits and labels)

FIELDS = ["target", "n_train", "features", "method", "val_mae", "test_mae", "dim", "n_val", "n_test", "chosen",
          "leaks_target", "seconds"]
METHODS = ("ridge", "krr", "head")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="band_gap,log_kvrh,log_gvrh,last_phdos_peak")
    p.add_argument("--sizes", default="250,1000", help="training structures (drawn from the benchmark's split)")
    p.add_argument("--teachers", default="chgnet,sevennet,default,crysgnn,mp-eform")
    p.add_argument("--no-twins", action="store_true", help="skip the random twins")
    p.add_argument("--twins", default=None, metavar="LIST", help="random twins of these teachers only (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MLP heads and of the random twins")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    p.add_argument("--cache-dir", default=None, help="embedding cache (default $CRYSDISTILL_CACHE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/heads")
    return p.parse_args(argv)


def _done(path: Path) -> set[tuple[str, str, str, str]]:
    if not path.exists():
        return set()
    with open(path, newline="") as fh:
        return {(r["target"], r["n_train"], r["features"], r["method"]) for r in csv.DictReader(fh)}


def summarise(out: Path) -> str:
    """A markdown table per target: rows are features, columns method × size (test MAE)."""
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        sub = [r for r in rows if r["target"] == target]
        sizes = sorted({int(r["n_train"]) for r in sub})
        feats = list(dict.fromkeys(r["features"] for r in sub))
        cell = {(r["features"], int(r["n_train"]), r["method"]): r for r in sub}
        label, dec = LABELS.get(target, (target, 4))
        first = sub[0]
        lines += [f"**{label}** (validation {first['n_val']}, test {first['n_test']}; test MAE)", "",
                  "| features | " + " | ".join(f"{m} {n:,}" for n in sizes for m in METHODS) + " |",
                  "|---|" + "---|" * (len(sizes) * len(METHODS))]
        for f in feats:
            vals = []
            for n in sizes:
                for m in METHODS:
                    r = cell.get((f, n, m))
                    vals.append("" if r is None else f"{float(r['test_mae']):.{dec}f}"
                                + (" ⚠" if r["leaks_target"] == "True" else ""))
            lines.append(f"| {f} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from dataclasses import replace

    import torch

    from crysdistill.data.readers import read_dataset
    from crysdistill.distill.cache import check_records
    from crysdistill.errors import ConfigError
    from crysdistill.teacher.probe import composition_features
    from crysdistill.teachers.base import leaks
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.head import fit_head, fit_ridge, structure_features
    from crysdistill.train.krr import fit_krr
    from crysdistill.train.trainer import prepare

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    done = _done(results)
    new_file = not results.exists()
    fh = open(results, "a", newline="")
    wr = csv.DictWriter(fh, fieldnames=FIELDS)
    if new_file:
        wr.writeheader()
    teachers = {name: load_teacher(name) for name in args.teachers.split(",") if name}
    sizes = [int(s) for s in args.sizes.split(",")]
    datasets: dict[str, object] = {}
    for target in args.targets.split(","):
        fname, val, test, unit, _ = DATA[target]
        if fname not in datasets:
            datasets[fname] = read_dataset(os.path.join(args.data_dir, fname))
        ds = datasets[fname]
        preps = {}
        for n in sizes:  # a size larger than the set trains on the rest (the benchmark's "all")
            cfg = TrainConfig(student="cgcnn", targets=[target], train_size=n, val_size=val, test_size=test,
                              seed=SPLIT_SEED, split_seed=SPLIT_SEED, cache_dir=args.cache_dir, workers=1)
            try:
                prep = prepare(cfg, ds)
            except ConfigError:
                prep = prepare(replace(cfg, train_size=None), ds)
            preps[len(prep.splits["train"])] = prep
        sizes_t = sorted(preps)
        big = preps[max(sizes_t)]
        by_id = {r.id: r for r in ds.records}
        records = [by_id[i] for i in big.graphs.ids]
        used = np.unique(np.concatenate([np.concatenate(list(p.splits.values())) for p in preps.values()]))
        keep = np.ones(len(records), dtype=bool)
        for t in teachers.values():  # every row of a target sees the same structures
            _, problems = check_records(t, [records[i] for i in used], on_error="skip")
            bad = {p.record for p in problems}
            keep[[i for i in used if records[i].name in bad]] = False
        print(f"{target}: {len(used)} structures in the splits, {int((~keep[used]).sum())} dropped (a teacher cannot "
              f"embed them)", flush=True)
        used = used[keep[used]]
        feature_sets: dict[str, tuple[object, object]] = {"composition": (None, None)}
        for name, t in teachers.items():
            feature_sets[name] = (t, t)
            if not args.no_twins and (args.twins is None or name in args.twins.split(",")):
                feature_sets[f"{name} (random twin)"] = (t, None)
        for fname_, (teacher, model) in feature_sets.items():
            todo = [(n, m) for n in sizes_t for m in METHODS if (target, str(n), fname_, m) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            if teacher is None:
                x_used = composition_features([np.asarray(records[i].structure.atomic_numbers) for i in used])
            else:
                if model is None:
                    model = teacher.random_twin(args.seed)
                x_used = structure_features(model, [records[i] for i in used],
                                            list(range(model.n_layers + 1)), cache_dir=args.cache_dir)
            embed_s = time.perf_counter() - t0
            x = np.zeros((len(records), x_used.shape[1]))
            x[used] = x_used
            leak = bool(teacher is not None and leaks(teacher.training, target))
            for n, method in todo:
                prep = preps[n]
                splits = {k: np.asarray([i for i in v if keep[i]]) for k, v in prep.splits.items()}
                y = prep.y
                t1 = time.perf_counter()
                if method == "head":
                    fit = fit_head(x, y, prep.normalizer, splits, seed=args.seed)
                    pred, val_mae, chosen = fit["pred"][:, 0], fit["candidates"][fit["chosen"]], fit["chosen"]
                elif method == "krr":
                    fit = fit_krr(x, y[:, 0], splits, seed=args.seed)
                    pred, val_mae, chosen = fit["pred"]["test"], fit["val_mae"], f"{fit['kernel']}"
                else:
                    mu, sd = x[splits["train"]].mean(0), x[splits["train"]].std(0)
                    xs = (x - mu) / np.where(sd > 1e-6, sd, 1.0)
                    w, val_mae = fit_ridge(xs, y, splits["train"], splits["val"])
                    pred = (np.concatenate([xs[splits["test"]], np.ones((len(splits["test"]), 1))], axis=1) @ w)[:, 0]
                    chosen = "ridge"
                test_mae = float(np.mean(np.abs(pred - y[splits["test"], 0])))
                wr.writerow({"target": target, "n_train": n, "features": fname_, "method": method,
                             "val_mae": f"{float(val_mae):.6g}", "test_mae": f"{test_mae:.6g}", "dim": x.shape[1],
                             "n_val": len(splits["val"]), "n_test": len(splits["test"]), "chosen": chosen,
                             "leaks_target": leak, "seconds": f"{time.perf_counter() - t1 + embed_s:.1f}"})
                fh.flush()
                embed_s = 0.0
                print(f"{target:16s} n={n:<5d} {fname_:28s} {method:5s} test MAE {test_mae:.4f}", flush=True)
        for n in sizes_t:  # the mean of the training labels: the floor of every column
            if (target, str(n), "training mean", METHODS[0]) in done:
                continue
            prep = preps[n]
            splits = {k: np.asarray([i for i in v if keep[i]]) for k, v in prep.splits.items()}
            mean = float(np.mean(prep.y[splits["train"], 0]))
            for method in METHODS:
                wr.writerow({"target": target, "n_train": n, "features": "training mean", "method": method,
                             "val_mae": f"{np.mean(np.abs(prep.y[splits['val'], 0] - mean)):.6g}",
                             "test_mae": f"{np.mean(np.abs(prep.y[splits['test'], 0] - mean)):.6g}", "dim": 0,
                             "n_val": len(splits["val"]), "n_test": len(splits["test"]), "chosen": "mean",
                             "leaks_target": False, "seconds": "0"})
            fh.flush()
    fh.close()
    text = summarise(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
