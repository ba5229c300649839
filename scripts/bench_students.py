#!/usr/bin/env python
"""Seconds per epoch and peak memory of each student, vanilla, distilled and injected, on the same data.

Each (student, mode) runs in its own process (so peak memory is its own) through the library's
``prepare`` + ``fit`` on the first ``--n`` structures of the CGCNN Materials Project set: graphs
and teacher embeddings are built (and cached) before timing, then ``--epochs`` epochs are timed
and the median epoch is reported. The distilled/vanilla ratio is the cost of distillation once
the frozen teacher's embeddings are cached (the goal is at most 1.10); the injected/vanilla
ratio is the cost of feeding every layer of the teacher's atom embeddings to the student (read
from the cache each epoch; the teacher's forward pass is paid once, before the first epoch).

    python scripts/bench_students.py --students cgcnn,gatgnn,deepergatgnn,alignn --n 1000
    python scripts/bench_students.py --students cgcnn --teacher sevennet --modes vanilla,distilled,injected
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp_cgcnn_eform_gap_efermi_magmom.jsonl.gz"


def worker(args: argparse.Namespace) -> None:
    import csv
    import statistics
    import tempfile

    import torch

    from crysdistill.config import load_config
    from crysdistill.data.readers import read_dataset
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import fit, prepare

    torch.set_num_threads(args.threads)
    ds = read_dataset(args.data, limit=args.n + 100)
    cfg_file = Path(args.config_dir) / f"{args.student}.yaml"
    extra = {"student": args.student, "targets": ["formation_energy_per_atom"], "train_size": args.n,
             "val_size": 100, "test_size": 0, "epochs": args.epochs, "batch_size": args.batch_size,
             "teacher": args.teacher if args.mode != "vanilla" else None, "workers": 2,
             "cache_dir": args.cache_dir, "optim": {"scheduler": "none"}}
    if args.mode == "injected":
        from crysdistill.teachers.registry import load_teacher

        extra["distill"] = {"inject_layers": list(range(load_teacher(args.teacher).n_layers + 1)), "node_weight": 0.0}
    cfg = load_config(TrainConfig, cfg_file if cfg_file.exists() else None, args.override, extra=extra)
    prep = prepare(cfg, ds)
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, prep, Path(tmp))
        rows = list(csv.DictReader(open(Path(tmp) / "metrics.csv")))
    secs = [float(r["seconds"]) for r in rows]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"student": args.student, "mode": args.mode, "epoch_s": statistics.median(secs[1:] or secs),
                      "epochs": secs, "peak_mb": rss, "n": args.n}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", default="cgcnn,gatgnn,deepergatgnn,alignn")
    p.add_argument("--n", type=int, default=1000, help="training structures")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher", default="default")
    p.add_argument("--modes", default="vanilla,distilled", help="vanilla,distilled,injected")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--cache-dir", default=os.environ.get("CRYSDISTILL_CACHE", "/tmp/crysdistill-bench-cache"))
    p.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "configs"))
    p.add_argument("-O", "--override", action="append", default=[])
    p.add_argument("--worker", nargs=2, metavar=("STUDENT", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.student, args.mode = args.worker
        worker(args)
        return 0
    results = []
    for student in args.students.split(","):
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--worker", student, mode, "--n", str(args.n), "--epochs",
                   str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--teacher", args.teacher, "--modes", args.modes, "--data", args.data, "--cache-dir", args.cache_dir,
                   "--config-dir", args.config_dir, *[x for o in args.override for x in ("-O", o)]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{student} {mode} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  {student} {mode}: {results[-1]['epoch_s']:.2f} s/epoch, peak {results[-1]['peak_mb']:.0f} MB",
                  flush=True)
    modes = args.modes.split(",")
    print(f"\n{args.n} training structures, batch {args.batch_size}, {args.threads} threads, teacher {args.teacher}, "
          f"median of epochs 2..{args.epochs}")
    print("| student | " + " | ".join(f"{m} s/epoch" for m in modes) + " | "
          + " | ".join(f"{m} / vanilla" for m in modes if m != "vanilla") + " | "
          + " | ".join(f"peak MB {m}" for m in modes) + " |")
    print("|---|" + "---|" * (3 * len(modes) - 1))
    for student in args.students.split(","):
        r = {x["mode"]: x for x in results if x["student"] == student}
        if len(r) < len(modes) or "vanilla" not in r:
            continue
        v = r["vanilla"]["epoch_s"]
        print(f"| {student} | " + " | ".join(f"{r[m]['epoch_s']:.2f}" for m in modes) + " | "
              + " | ".join(f"{r[m]['epoch_s'] / v:.2f}" for m in modes if m != "vanilla") + " | "
              + " | ".join(f"{r[m]['peak_mb']:.0f}" for m in modes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
