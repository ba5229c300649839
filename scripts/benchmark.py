#!/usr/bin/env python
"""Evidence benchmark: how much does distillation help each student, on real data?

For each student × target × training-set size × seed it trains a vanilla and a distilled run
(same split, budget and hyperparameters; only the distillation term differs), selects each on
validation and tests it once, through the library's own ``train_student``. Every run lands in
``OUT/runs/<student>/<target>/n<size>/<mode>/seed<k>/`` (a normal run folder), so the grid can be
run in pieces (``--students``, ``--targets``, ``--sizes``, ``--seeds``) and merged: finished runs
are skipped, a run interrupted part-way continues from its ``last.pt`` (losing at most one epoch),
and ``results.csv``, ``summary.md`` and the plots are rebuilt from every run found.

The *safeguard* column picks, per seed, the weight with the best validation MAE among vanilla
(weight 0) and the distilled weights run, then reports that run's test MAE: validation only
decides, so distillation cannot make a student worse than vanilla on validation.

Example (the command behind docs/BENCHMARKS.md):

    python scripts/benchmark.py --students cgcnn --targets formation_energy_per_atom,band_gap \\
        --sizes 1000 --seeds 0,1,2 --epochs 60 --teacher default --out runs/benchmark
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

DATA = {
    # target: (file, val size, test size, unit, uses --sizes)
    "formation_energy_per_atom": ("mp_cgcnn_eform_gap_efermi_magmom.jsonl.gz", 1000, 5000, "eV/atom", True),
    "band_gap": ("mp_cgcnn_eform_gap_efermi_magmom.jsonl.gz", 1000, 5000, "eV", True),
    "log_kvrh": ("mp_elasticity_cgcnn.jsonl.gz", 0.2, 0.2, "log10 GPa", False),
    "log_gvrh": ("mp_elasticity_cgcnn.jsonl.gz", 0.2, 0.2, "log10 GPa", False),
    "last_phdos_peak": ("matbench_phonons.jsonl.gz", 0.2, 0.2, "cm^-1", False),
    "K_VRH": ("mp_elasticity_cgcnn.jsonl.gz", 0.2, 0.2, "GPa", False),
    "G_VRH": ("mp_elasticity_cgcnn.jsonl.gz", 0.2, 0.2, "GPa", False),
}
#: How the compact table names each target, and the decimals it shows.
LABELS = {
    "formation_energy_per_atom": ("formation energy (eV/atom)", 4),
    "band_gap": ("band gap (eV)", 4),
    "log_kvrh": ("log₁₀ K_VRH", 4),
    "log_gvrh": ("log₁₀ G_VRH", 4),
    "last_phdos_peak": ("last phonon DOS peak (cm⁻¹)", 1),
    "K_VRH": ("K_VRH (GPa)", 2),
    "G_VRH": ("G_VRH (GPa)", 2),
}
SPLIT_SEED = 0  # one fixed split per dataset; model seeds vary
FIELDS = ["student", "target", "n_train", "seed", "mode", "distill_weight", "test_mae", "val_mae", "best_epoch",
          "epochs", "seconds", "n_val", "n_test", "teacher_fingerprint", "run"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--students", default="cgcnn", help="comma-separated student names")
    p.add_argument("--targets", default="formation_energy_per_atom,band_gap", help=f"comma-separated: {', '.join(DATA)}")
    p.add_argument("--sizes", default="250,1000", help="training-set sizes (MP targets; others use 60%% of the data)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--teacher", default="default", help="teacher checkpoint or 'default'")
    p.add_argument("--weights", default="0.1", help="distillation weights to run (node_weight); 0 = vanilla is always run")
    p.add_argument("--layers", default="-1", help="teacher layers matched, e.g. 0,1,2 (multi-scale)")
    p.add_argument("--inject", default="", help="also run embedding injection of these teacher layers (e.g. 0,1,2)")
    p.add_argument("--tag-teacher", action="store_true",
                   help="name the teacher in the injection and distillation modes (inject-chgnet-L0.1.2.3.4), so runs "
                        "of several teachers share one --out and one vanilla")
    p.add_argument("--sized-all", action="store_true",
                   help="use --sizes for every target (the elasticity and phonon sets keep 20%% validation and test; "
                        "by default they train on the remaining 60%%)")
    p.add_argument("--init", default=None, metavar="NAME",
                   help="also run students started from this distilled encoder (train --init NAME): mode init-NAME")
    p.add_argument("--pseudo", default=None, metavar="TEACHER",
                   help="also run students trained on a corpus labelled by this teacher + a head fitted on each run's "
                        "training split (train --pseudo-teacher): mode pseudo-TEACHER. A pattern with {out}, "
                        "{student}, {target}, {n} and {seed} names a teacher per cell, e.g. the one --finetune made: "
                        "'{out}/runs/{student}/{target}/n{n}/finetune-chgnet/seed{seed}/teacher.pt' (mode "
                        "pseudo-finetuned-chgnet)")
    p.add_argument("--pseudo-data", default=None, metavar="PATH",
                   help="the unlabelled corpus for --pseudo (default: DATA_DIR/pretrain_unlabelled.jsonl.gz)")
    p.add_argument("--heads", default="", metavar="LIST",
                   help="also fit the teacher + head reference (crysdistill head) for these teachers on the same "
                        "splits and seeds, e.g. chgnet,sevennet,composition: mode head-NAME")
    p.add_argument("--finetune", default="", metavar="LIST",
                   help="also fine-tune these teachers end to end on each cell's split (e.g. chgnet): the accuracy "
                        "ceiling row, mode finetune-<teacher>")
    p.add_argument("--finetune-epochs", default="", metavar="N[,N…]",
                   help="fine-tuning epochs per size in --sizes order (default: --epochs); e.g. 30,12")
    p.add_argument("--finetune-option", action="append", default=[], metavar="key=value",
                   help="fine-tuning config overrides (default: loss=l1, the run's target_transform)")
    p.add_argument("--mode-suffix", default="", metavar="TEXT",
                   help="append TEXT to every student mode's name, so runs with other -O options (loss=l1 "
                        "target_transform=log) share one --out with the default ones: vanilla-l1-log, …")
    p.add_argument("--no-vanilla", action="store_true", help="skip the vanilla runs (e.g. when another process runs them)")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "configs"),
                   help="per-student YAML configs (<student>.yaml), if present")
    p.add_argument("-O", "--override", action="append", default=[], metavar="key=value",
                   help="config override for every run (e.g. model.layers=3)")
    p.add_argument("--summarise-only", action="store_true", help="only rebuild results.csv, summary.md and plots")
    p.add_argument("--with-results", action="append", default=[], metavar="CSV",
                   help="also tabulate the rows of an earlier results.csv (e.g. docs/benchmark_results_foundation.csv: "
                        "the same split and seeds, so a new mode is compared with vanilla without rerunning it); a "
                        "run found under --out replaces a row of the same student, target, size, mode and seed")
    write = p.add_mutually_exclusive_group()
    write.add_argument("--write-corpus", metavar="PATH", default=None,
                   help="write the first target's dataset without its validation and test structures (the "
                        "grid's split) to PATH (.jsonl.gz), to pretrain a teacher that never sees them; then exit")
    write.add_argument("--write-test", metavar="PATH", default=None,
                   help="write the first target's test structures (the grid's split) to PATH (.jsonl.gz), e.g. "
                        "for 'crysdistill teacher eval' of a teacher with a property head; then exit")
    return p.parse_args(argv)


def run_grid(args: argparse.Namespace) -> None:
    from crysdistill.config import load_config
    from crysdistill.data.readers import read_dataset
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import train_student

    out = Path(args.out)
    students = args.students.split(",")
    targets = args.targets.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.weights.split(",") if float(w) != 0]
    layers = [int(x) for x in args.layers.split(",")]
    inject = [int(x) for x in args.inject.split(",")] if args.inject else []
    layer_tag = "" if layers == [-1] else "-L" + ".".join(map(str, layers))
    teacher_tag = "-" + args.teacher.replace(":", "_").replace("/", "_") if args.tag_teacher else ""
    # (mode name, node weight, injected layers)
    modes = [] if args.no_vanilla else [("vanilla", 0.0, [])]
    modes += [(f"distill{teacher_tag}-w{w:g}{layer_tag}", w, []) for w in weights]
    if inject:
        modes.append((f"inject{teacher_tag}-L{'.'.join(map(str, inject))}", 0.0, inject))
    if args.init:
        modes.append((f"init-{args.init.replace('/', '_')}", 0.0, []))
    if args.pseudo:
        # a per-cell labeller (the teacher fine-tuned on that cell's split and seed) is named by a pattern
        # (the teacher's name from the pattern's finetune-<teacher> folder, or --finetune)
        tuned = re.search(r"finetune-([A-Za-z0-9_]+)", args.pseudo)
        tag = (f"finetuned-{tuned.group(1) if tuned else args.finetune.split(',')[0] or 'teacher'}"
               if "{" in args.pseudo else args.pseudo.replace(':', '_').replace('/', '_'))
        modes.append((f"pseudo-{tag}", 0.0, []))
    pseudo_data = args.pseudo_data or os.path.join(args.data_dir, "pretrain_unlabelled.jsonl.gz")
    heads = [h for h in args.heads.split(",") if h]
    tunes = [t for t in args.finetune.split(",") if t]
    tune_epochs = dict(zip(sizes, [int(e) for e in args.finetune_epochs.split(",") if e]))
    datasets: dict[str, object] = {}
    for target in targets:
        if target not in DATA:
            sys.exit(f"unknown target {target!r}; choose from {', '.join(DATA)}")
        fname, val, test, _, sized = DATA[target]
        if fname not in datasets:
            t0 = time.perf_counter()
            datasets[fname] = read_dataset(os.path.join(args.data_dir, fname))
            print(f"read {fname}: {len(datasets[fname])} structures in {time.perf_counter() - t0:.0f} s", flush=True)
        for student in students:
            cfg_file = Path(args.config_dir) / f"{student}.yaml"
            for n in (sizes if sized or args.sized_all else [None]):
                for seed in seeds:
                    for tune in tunes:  # first: a --pseudo pattern may name the teacher fine-tuned here
                        run_finetune_cell(args, out, student, target, n, seed, tune, tune_epochs.get(n, args.epochs),
                                          datasets[fname], val, test)
                    for mode, w, inj in modes:
                        run = (out / "runs" / student / target / f"n{n or 'all'}" / (mode + args.mode_suffix)
                               / f"seed{seed}")
                        if (run / "summary.json").exists():
                            continue
                        is_init = mode.startswith("init-")
                        is_pseudo = mode.startswith("pseudo-")
                        extra = {"student": student, "targets": [target], "train_size": n, "val_size": val,
                                 "test_size": test, "seed": seed, "split_seed": SPLIT_SEED, "epochs": args.epochs,
                                 "teacher": args.teacher if mode != "vanilla" and not (is_init or is_pseudo) else None,
                                 "init": args.init if is_init else None,
                                 "pseudo": {"teacher": args.pseudo.format(out=out, student=student, target=target,
                                                                          n=n or "all", seed=seed),
                                            "data": pseudo_data} if is_pseudo else {},
                                 "distill": {"node_weight": w, "teacher_layers": layers, "inject_layers": inj}}
                        cfg = load_config(TrainConfig, cfg_file if cfg_file.exists() else None, args.override,
                                          extra=extra)
                        t0 = time.perf_counter()
                        # a run interrupted earlier continues from its last epoch (same config, or one clear error)
                        s = train_student(cfg, datasets[fname], run, resume=(run / "last.pt").exists())
                        print(f"{student:12s} {target:26s} n={s['n_train']:<5d} seed={seed} {mode + args.mode_suffix:14s} "
                              f"val {s['val_mae']:.4f} test {s['test_mae']:.4f} (epoch {s['best_epoch']}) "
                              f"{time.perf_counter() - t0:.0f} s", flush=True)
                    for head in heads:
                        run_head_cell(args, out, student, target, n, seed, head, datasets[fname], val, test)


def run_head_cell(args, out: Path, student: str, target: str, n, seed: int, head: str, dataset, val, test) -> None:
    """The teacher + head reference on the split of one grid cell, written as a run the tables read."""
    from crysdistill.config import load_config
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.head import run_head

    run = out / "runs" / student / target / f"n{n or 'all'}" / f"head-{head}" / f"seed{seed}"
    if (run / "summary.json").exists():
        return
    cfg = load_config(TrainConfig, None, [o for o in args.override if o.startswith(("threads", "target_transform"))],
                      extra={"student": student, "targets": [target], "train_size": n, "val_size": val,
                             "test_size": test, "seed": seed, "split_seed": SPLIT_SEED, "device": "cpu",
                             "teacher": None if head == "composition" else head})
    t0 = time.perf_counter()
    res = run_head(cfg, dataset, features="composition" if head == "composition" else "teacher", out_dir=run)
    summary = {"student": student, "targets": [target], "n_train": res.n_train, "seed": seed, "distill_weight": 0.0,
               "test_mae": res.test_mae, "val_mae": res.val_mae, "best_epoch": 0, "epochs": 0,
               "seconds": time.perf_counter() - t0, "n_val": res.n_val, "n_test": res.n_test,
               "teacher_fingerprint": res.teacher_fingerprint, "head": res.to_dict()}
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{student:12s} {target:26s} n={res.n_train:<5d} seed={seed} head-{head:9s} val {res.val_mae:.4f} "
          f"test {res.test_mae:.4f} ({res.chosen}) {summary['seconds']:.0f} s", flush=True)


def run_finetune_cell(args, out: Path, student: str, target: str, n, seed: int, teacher: str, epochs: int, dataset,
                      val, test) -> None:
    """The fine-tuned teacher (the accuracy ceiling) on the split of one grid cell, as a run the tables read."""
    from crysdistill.config import load_config
    from crysdistill.train.finetune import FinetuneConfig, finetune

    run = out / "runs" / student / target / f"n{n or 'all'}" / f"finetune-{teacher}" / f"seed{seed}"
    done = run / "summary.json"
    if done.exists() and "student" in json.loads(done.read_text()):
        return
    keep = [o for o in args.override if o.startswith(("threads", "target_transform", "workers"))]
    cfg = load_config(FinetuneConfig, None, keep + args.finetune_option,
                      extra={"teacher": teacher, "student": student, "targets": [target], "train_size": n,
                             "val_size": val, "test_size": test, "seed": seed, "split_seed": SPLIT_SEED,
                             "epochs": epochs, "device": "cpu"})
    t0 = time.perf_counter()
    s = finetune(cfg, dataset, run, resume=(run / "last.pt").exists())
    # finetune's own summary, plus what the tables read
    s.update({"student": student, "distill_weight": 0.0, "teacher_fingerprint": s["base_fingerprint"],
              "seconds": s["seconds"] if s["seconds"] else time.perf_counter() - t0})
    done.write_text(json.dumps(s, indent=1))
    print(f"{student:12s} {target:26s} n={s['n_train']:<5d} seed={seed} finetune-{teacher:9s} val {s['val_mae']:.4f} "
          f"test {s['test_mae']:.4f} (epoch {s['best_epoch']}) {time.perf_counter() - t0:.0f} s", flush=True)


def collect(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "runs").glob("*/*/*/*/seed*/summary.json")):
        s = json.loads(f.read_text())
        mode = f.parent.parent.name
        rows.append({"student": s["student"], "target": s["targets"][0], "n_train": s["n_train"], "seed": s["seed"],
                     "mode": mode, "distill_weight": s["distill_weight"], "test_mae": s["test_mae"],
                     "val_mae": s["val_mae"], "best_epoch": s["best_epoch"], "epochs": s["epochs"],
                     "seconds": round(s["seconds"], 1), "n_val": s["n_val"], "n_test": s["n_test"],
                     "teacher_fingerprint": s["teacher_fingerprint"], "run": str(f.parent)})
    return rows


def add_safeguard(rows: list[dict]) -> list[dict]:
    """Per (student, target, n, seed): the run with the best validation MAE among all weights."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        # the safeguard chooses among students (not teachers + heads, not fine-tuned teachers)
        if r["mode"] == "safeguard" or r["mode"].startswith(("head-", "finetune-")):
            continue
        groups.setdefault((r["student"], r["target"], r["n_train"], r["seed"]), []).append(r)
    out = [r for r in rows if r["mode"] != "safeguard"]
    for rs in groups.values():
        if len(rs) < 2 or not any(r["mode"] == "vanilla" for r in rs):
            continue
        best = min(rs, key=lambda r: (r["val_mae"], r["distill_weight"]))
        out.append({**best, "mode": "safeguard"})
    return out


TEACHER_NAMES = ("sevennet", "chgnet", "mp-eform", "default", "crysgnn")


def mode_teacher(mode: str) -> str | None:
    """The teacher a tagged mode name carries (``inject-sevennet-L0.1``, ``head-chgnet``, ``pseudo-sevennet``,
    ``init-cgcnn-chgnet``), or ``None``."""
    parts = mode.split("-")
    for name in TEACHER_NAMES:
        n = name.split("-")
        if any(parts[i:i + len(n)] == n for i in range(1, len(parts))):
            return name
    return None


_TRAINING: dict[str, object] = {}


def leaked(mode: str, target: str) -> bool:
    """Whether the teacher behind ``mode`` was trained on ``target`` (or what gives it away)."""
    from crysdistill.teachers.base import leaks

    name = mode_teacher(mode)
    if name is None:
        return False
    if name not in _TRAINING:
        from crysdistill.teachers.registry import load_teacher

        try:
            _TRAINING[name] = load_teacher(name).training
        except Exception:  # a teacher that does not load here: no mark rather than a crash
            _TRAINING[name] = None
    return _TRAINING[name] is not None and leaks(_TRAINING[name], target)


def summarise(rows: list[dict], out: Path) -> str:
    from collections import defaultdict

    stats = defaultdict(list)
    for r in rows:
        stats[(r["student"], r["target"], r["n_train"], r["mode"])].append(r)
    heads = {}  # the best teacher + head reference of each cell (lowest mean test MAE)
    for (student, target, n, mode), rs in stats.items():
        if mode.startswith("head-") and mode != "head-composition":
            m = float(np.mean([r["test_mae"] for r in rs]))
            if (student, target, n) not in heads or m < heads[(student, target, n)][1]:
                heads[(student, target, n)] = (mode, m)
    lines = ["| student | target | n_train | mode | seeds | test MAE (mean ± std) | vs vanilla | seeds better | "
             "vs best head | val MAE | best epoch | s/run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(stats, key=lambda k: (k[0], k[1], k[2], k[3] != "vanilla", k[3])):
        student, target, n, mode = key
        rs = sorted(stats[key], key=lambda r: r["seed"])
        t = np.array([r["test_mae"] for r in rs])
        van = {r["seed"]: r["test_mae"] for r in stats.get((student, target, n, "vanilla"), [])}
        rel = better = ""
        if mode != "vanilla" and van:
            common = [r for r in rs if r["seed"] in van]
            if common:
                vm = np.mean([van[r["seed"]] for r in common])
                rel = f"{100 * (np.mean([r['test_mae'] for r in common]) / vm - 1):+.1f} %"
                better = f"{sum(r['test_mae'] < van[r['seed']] for r in common)}/{len(common)}"
        unit = DATA.get(target, ("", 0, 0, ""))[3]
        head = heads.get((student, target, n))
        vs_head = f"{t.mean() / head[1]:.2f} × {head[0][5:]}" if head and not mode.startswith("head-") else ""
        name = mode + (" ⚠ leak" if leaked(mode, target) else "")
        lines.append(f"| {student} | {target} ({unit}) | {n} | {name} | {len(rs)} | {t.mean():.4f} ± {t.std(ddof=1) if len(t) > 1 else 0:.4f} "
                     f"| {rel} | {better} | {vs_head} | {np.mean([r['val_mae'] for r in rs]):.4f} | "
                     f"{', '.join(str(r['best_epoch']) for r in rs)} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def compact(rows: list[dict]) -> str:
    """One line per student × target × size: mean ± std of each mode, change against vanilla.

    The change compares the means over the seeds both modes have (paired, as in the full table).
    """
    modes = sorted({r["mode"] for r in rows}, key=lambda m: (m != "vanilla", m == "safeguard", m))
    cells: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        cells.setdefault((r["student"], r["target"], int(r["n_train"])), {}).setdefault(r["mode"], {})[
            int(r["seed"])] = float(r["test_mae"])
    lines = ["| student | target | training structures | " + " | ".join(modes) + " |",
             "|---|---|---|" + "---|" * len(modes)]
    order = {t: i for i, t in enumerate(DATA)}
    full = max(len(by_seed) for by_mode in cells.values() for by_seed in by_mode.values())
    for (student, target, n), by_mode in sorted(cells.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99),
                                                                                kv[0][2])):
        label, dec = LABELS.get(target, (target, 4))
        van = by_mode.get("vanilla", {})
        out = []
        for m in modes:
            t = np.array(list(by_mode.get(m, {}).values()))
            if not len(t):
                out.append("—")
                continue
            cell = f"{t.mean():.{dec}f} ± {t.std(ddof=1) if len(t) > 1 else 0:.{dec}f}"
            common = sorted(set(by_mode[m]) & set(van))
            if m != "vanilla" and common:
                change = np.mean([by_mode[m][k] for k in common]) / np.mean([van[k] for k in common]) - 1
                cell += f" ({100 * change:+.1f} %)"
            if len(t) < full:
                cell += f" [{len(t)} of {full} seeds]"
            if leaked(m, target):
                cell += " ⚠"
            out.append(cell)
        lines.append(f"| {student} | {label} | {n:,} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n" + ("\n⚠: the teacher behind this column was trained on the target or a label that "
                                      "gives it away (a leakage control, not a transfer result)\n"
                                      if any(leaked(m, t) for (_, t, _), bm in cells.items() for m in bm) else "")


def plots(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for student in sorted({r["student"] for r in rows}):
        for target in sorted({r["target"] for r in rows if r["student"] == student}):
            rs = [r for r in rows if r["student"] == student and r["target"] == target]
            sizes = sorted({r["n_train"] for r in rs})
            if len(sizes) >= 1:
                fig, ax = plt.subplots(figsize=(4.5, 3.5))
                for mode in sorted({r["mode"] for r in rs}):
                    m = [np.mean([r["test_mae"] for r in rs if r["mode"] == mode and r["n_train"] == n]) for n in sizes
                         if any(r["mode"] == mode and r["n_train"] == n for r in rs)]
                    s = [np.std([r["test_mae"] for r in rs if r["mode"] == mode and r["n_train"] == n]) for n in sizes
                         if any(r["mode"] == mode and r["n_train"] == n for r in rs)]
                    ns = [n for n in sizes if any(r["mode"] == mode and r["n_train"] == n for r in rs)]
                    ax.errorbar(ns, m, yerr=s, marker="o", capsize=3, label=mode)
                ax.set_xscale("log")
                ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xlabel("training structures")
                ax.set_ylabel(f"test MAE ({DATA.get(target, ('', 0, 0, ''))[3]})")
                ax.set_title(f"{student}: {target}", fontsize=9)
                ax.legend(fontsize=7)
                fig.tight_layout()
                p = out / f"curve_{student}_{target}.png"
                fig.savefig(p, dpi=110)
                plt.close(fig)
                made.append(p)
            # parity plot of the largest size, seed 0
            n = sizes[-1]
            fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), sharex=True, sharey=True)
            for ax, mode in zip(axes, ["vanilla", next((r["mode"] for r in rs if r["mode"].startswith("distill")), "")]):
                run = next((r["run"] for r in rs if r["mode"] == mode and r["n_train"] == n and r["seed"] == 0), None)
                if not run or not (Path(run) / "predictions_test.csv").exists():
                    continue
                with open(Path(run) / "predictions_test.csv") as fh:
                    data = list(csv.reader(fh))[1:]
                y = np.array([float(d[1]) for d in data])
                yhat = np.array([float(d[2]) for d in data])
                ax.scatter(y, yhat, s=3, alpha=0.4)
                lo, hi = np.percentile(np.r_[y, yhat], [0.5, 99.5])
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
                ax.set_xlim(lo, hi)
                ax.set_ylim(lo, hi)
                ax.set_title(f"{mode} (n={n}, seed 0), MAE {np.mean(np.abs(y - yhat)):.4f}", fontsize=8)
                ax.set_xlabel("DFT")
            axes[0].set_ylabel("predicted")
            fig.tight_layout()
            p = out / f"parity_{student}_{target}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            made.append(p)
    return made


def write_split_records(args: argparse.Namespace, dest: Path, test_only: bool) -> int:
    """Write records of the first target's dataset by the grid's split (which depends only on the
    dataset and ``SPLIT_SEED``, not on the training size): those in no validation or test split
    (a corpus for pretraining), or the test structures only (``test_only``)."""
    import gzip

    from crysdistill.config import load_config
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import prepare

    target = args.targets.split(",")[0]
    if target not in DATA:
        sys.exit(f"unknown target {target!r}; choose from {', '.join(DATA)}")
    if not dest.name.endswith(".jsonl.gz"):
        sys.exit(f"{dest}: name the file *.jsonl.gz (it is written gzip-compressed, one record per line)")
    fname, val, test, _, _ = DATA[target]
    source = os.path.join(args.data_dir, fname)
    student = args.students.split(",")[0]
    cfg_file = Path(args.config_dir) / f"{student}.yaml"
    cfg = load_config(TrainConfig, cfg_file if cfg_file.exists() else None, args.override,
                      extra={"student": student, "targets": [target], "train_size": None, "val_size": val,
                             "test_size": test, "seed": 0, "split_seed": SPLIT_SEED})
    prep = prepare(cfg, source)
    parts = ("test",) if test_only else ("val", "test")
    held = {prep.graphs.ids[i] for part in parts for i in prep.splits[part]}
    opener = gzip.open if source.endswith(".gz") else open
    kept = found = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with opener(source, "rt") as src, gzip.open(tmp, "wt") as out:
        for line in src:
            if not line.strip():
                continue
            is_held = json.loads(line).get("id") in held
            found += is_held
            if is_held == test_only:
                kept += 1
                out.write(line)
    if found != len(held):
        tmp.unlink()
        sys.exit(f"{source}: found {found} of the {len(held)} held-out records by their 'id' field; "
                 "this dataset's records need an 'id' key")
    os.replace(tmp, dest)
    what = "test records of the grid" if test_only else \
        f"records ({found} validation and test records of the grid left out)"
    print(f"{dest}: {kept} {what} from {fname}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_corpus or args.write_test:
        return write_split_records(args, Path(args.write_corpus or args.write_test), test_only=bool(args.write_test))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        run_grid(args)
    found = collect(out)
    have = {(r["student"], r["target"], int(r["n_train"]), r["mode"], int(r["seed"])) for r in found}
    for path in args.with_results:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                if r["mode"] == "safeguard":
                    continue
                key = (r["student"], r["target"], int(r["n_train"]), r["mode"], int(r["seed"]))
                if key not in have:
                    have.add(key)
                    found.append({**r, **{k: int(r[k]) for k in ("n_train", "seed", "best_epoch", "epochs", "n_val",
                                                                  "n_test")},
                                  **{k: float(r[k]) for k in ("distill_weight", "test_mae", "val_mae", "seconds")}})
    rows = add_safeguard(found)
    if not rows:
        print("no finished runs found")
        return 1
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    table = compact(rows) + "\n" + summarise(rows, out)
    (out / "summary.md").write_text(table)
    made = plots(rows, out)
    print(table)
    print(f"wrote {out / 'results.csv'}, {out / 'summary.md'} and {len(made)} plot(s)")
    return 0


if __name__ == "__main__":
    from crysdistill.errors import run_script

    run_script(main, "benchmark.py")
