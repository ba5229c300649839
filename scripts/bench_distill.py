#!/usr/bin/env python
"""Encoder distillation speed: one process against torchrun data parallel, on the same corpus and caches.

``crysdistill distill`` runs here as a user runs it (``python -m crysdistill distill`` for one process,
``python -m torch.distributed.run --nproc_per_node N -m crysdistill distill`` for N), on the same
corpus, teacher, layers, batch size and seed. A first, untimed run fills the graph and teacher-embedding
caches, so every timed run reads them (as a second distillation of a cached corpus does). Each layout
is ``PROCESSESxTHREADS`` (torch threads per process); the figures are the epoch time that
``metrics.csv`` records (median over the epochs after the first), the training structures per second
that makes, the command's whole wall time (start-up, cache reads, held-out metric, writes) and the
ratio of the epoch rate to the first layout's, measured in the same run.

    python scripts/bench_distill.py --teacher sevennet --data sample:elasticity --layouts 1x1,1x2,2x1

On a machine with several GPUs, ``--device cuda`` gives each process one GPU (nccl).
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sample:elasticity", help="the corpus (default: the elasticity sample)")
    p.add_argument("--limit", type=int, default=None, help="read only the first N structures")
    p.add_argument("--teacher", default="sevennet")
    p.add_argument("--student", default="cgcnn")
    p.add_argument("--layouts", default="1x1,1x2,2x1",
                   help="PROCESSESxTHREADS, comma-separated; the first is the baseline (default 1x1,1x2,2x1)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed run (the first is not counted)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="structures per optimiser step, over all processes (default 64, as distill)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="graph and embedding cache (default: a temporary folder)")
    p.add_argument("--keep", default=None, help="keep the run folders here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="distill overrides, e.g. teacher_layers=[0,5]")
    args = p.parse_args(argv)
    try:
        args.layouts = [tuple(int(x) for x in s.lower().split("x")) for s in args.layouts.split(",")]
        assert all(len(t) == 2 and min(t) >= 1 for t in args.layouts)
    except (ValueError, AssertionError):
        p.error(f"--layouts: expected PROCESSESxTHREADS pairs such as 1x1,2x1, not {args.layouts!r}")
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is not counted)")
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, out: Path, cache: Path, procs: int, threads: int, epochs: int) -> float:
    """Run one distillation; returns its wall time. Stops the benchmark with the run's own error."""
    common = ["distill", "--student", args.student, "--teacher", args.teacher, "--data", args.data, "--out", str(out),
              "--epochs", str(epochs), "--batch-size", str(args.batch_size), "--seed", "0", "--workers", "1",
              "--cache-dir", str(cache), "--device", args.device, f"threads={threads}", *args.overrides]
    if args.limit:
        common += ["--limit", str(args.limit)]
    if procs == 1:
        cmd = [sys.executable, "-m", "crysdistill", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "crysdistill", *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall


def main(argv=None) -> int:
    from crysdistill.utils import load_checkpoint

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(args.keep or tmp_)
        cache = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
        print(f"filling the caches ({args.teacher} embeddings and {args.student} graphs of {args.data})…", flush=True)
        t_fill = _run(args, tmp / "fill", cache, 1, 1, 1)
        print(f"  {t_fill:.0f} s (untimed)", flush=True)
        print(f"{'layout':>10s} {'epoch s':>9s} {'structures/s':>13s} {'wall s':>8s} {'vs ' + 'x'.join(map(str, args.layouts[0])):>8s}",
              flush=True)
        base = None
        for procs, threads in args.layouts:
            out = tmp / f"p{procs}t{threads}"
            wall = _run(args, out, cache, procs, threads, args.epochs)
            with open(out / "metrics.csv") as fh:
                rows = list(csv.DictReader(fh))
            epoch_s = statistics.median(float(r["seconds"]) for r in rows[1:])
            ck = load_checkpoint(out / "student.pt")
            n_train = int(ck["distillation"]["n_train"])
            n_train -= n_train % procs  # each epoch's order is cut to a multiple of the process count
            rate = n_train / epoch_s
            base = base or rate
            print(f"{f'{procs}x{threads}':>10s} {epoch_s:9.2f} {rate:13.1f} {wall:8.1f} {rate / base:8.2f}", flush=True)
    print(f"(epoch s: median of epochs 2–{args.epochs} from metrics.csv: training, the held-out metric and "
          f"writing student.pt when it improved; "
          f"batch {args.batch_size} structures per step over all processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
