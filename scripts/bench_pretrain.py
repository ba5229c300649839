"""Benchmark of teacher pretraining: throughput, cost of the connectivity head, memory vs corpus size.

Prints three tables, each with ratios to a baseline measured in the same run:

1. throughput of full pretraining steps (encoder + the four CrysGNN tasks, forward, backward, AdamW)
   in structures per second;
2. the share of a step spent in the connectivity task: sampled pairs (crysdistill) next to the
   all-pairs O(N²) formulation of CrysGNN (every ordered atom pair of every cell, one bilinear
   call per crystal, class 0 weighted 0.1), both measured as "step with it − step without it",
   on random batches and on batches of the largest cells;
3. the cost of the bond-orientation input (``encoder.angular_orders``): full steps with it next to
   steps of the same model without it, interleaved on the same batches;
4. peak memory of pretraining (reading and caching the corpus, then ``--steps`` training steps)
   on the first 4,000 structures and on the whole corpus, each in a fresh subprocess:
   ``ru_maxrss`` and the peak of anonymous memory (``RssAnon``, which leaves out the pages of the
   memory-mapped graph cache).

Usage::

    CRYSDISTILL_CACHE=/tmp/teacher-cache python scripts/bench_pretrain.py \\
        --data ../shared/data/pretrain_unlabelled.jsonl.gz [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crysdistill.data.batch import collate
from crysdistill.teacher.data import GraphDataset, stream_graphs
from crysdistill.teacher.pretext.connectivity import PairBilinear, neighbour_pairs
from crysdistill.teacher.pretrain import PretrainConfig, PretrainModel, load_pretrain_config


def random_subset(data: str, n: int, out: Path, seed: int = 0) -> Path:
    """Write ``n`` records of ``data`` drawn at random (seeded) to ``out`` (JSONL.gz), streaming."""
    with gzip.open(data, "rt", encoding="utf-8") as fh:
        total = sum(1 for line in fh if line.strip())
    keep = set(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False).tolist())
    with gzip.open(data, "rt", encoding="utf-8") as fh, gzip.open(out, "wt", encoding="utf-8") as dst:
        k = 0
        for line in fh:
            if not line.strip():
                continue
            if k in keep:
                dst.write(line)
            k += 1
    return out


def rss_anon_kib() -> int:
    """Current anonymous resident memory of this process (KiB)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def all_pairs_connectivity(head: PairBilinear, batch, node: torch.Tensor, max_count: int = 5) -> torch.Tensor:
    """CrysGNN's connectivity loss: every ordered pair (i, j) of every cell, class 0 weighted 0.1."""
    n = int(batch.num_nodes)
    pairs, label = neighbour_pairs(batch.edge_index, n, max_count)
    dense = torch.zeros(n, n, dtype=torch.long)
    dense[pairs[0], pairs[1]] = label
    weight = torch.ones(max_count + 1)
    weight[0] = 0.1
    losses = []
    for g in range(int(batch.num_graphs)):
        a, b = int(batch.ptr[g]), int(batch.ptr[g + 1])
        h = node[a:b]
        m = b - a
        left = h.repeat_interleave(m, dim=0)
        right = h.repeat(m, 1)
        logits = head(left, right)
        losses.append(F.cross_entropy(logits, dense[a:b, a:b].reshape(-1), weight=weight))
    return torch.stack(losses).mean()


def time_steps(model: PretrainModel, batches: list, repeats: int) -> dict[str, float]:
    """Median seconds per optimiser step of three variants, interleaved batch by batch so that a
    varying machine load hits them alike: ``sampled`` (as trained), ``none`` (no connectivity
    task) and ``all_pairs`` (CrysGNN's O(N²) connectivity)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    conn = model.tasks["connectivity"]
    times: dict[str, list[float]] = {"sampled": [], "none": [], "all_pairs": []}
    for r in range(repeats + 1):
        for batch in batches:
            for mode in times:
                t0 = time.perf_counter()
                out = model.encoder(batch)
                loss = sum(task.weight * task(batch, out, model.encoder).loss
                           for name, task in model.tasks.items() if name != "connectivity")
                if mode == "sampled":
                    loss = loss + conn.weight * conn(batch, out, model.encoder).loss
                elif mode == "all_pairs":
                    loss = loss + conn.weight * all_pairs_connectivity(conn.head, batch, out.node)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if r > 0:  # the first pass warms up
                    times[mode].append(time.perf_counter() - t0)
    return {mode: float(np.median(t)) for mode, t in times.items()}


def load_batches(data: str, config: PretrainConfig, n_batches: int, largest: bool = False) -> list:
    """``n_batches`` collated batches of the first structures of ``data`` (``largest``: of the
    structures with the most atoms instead)."""
    bs = config.batch_size
    graphs = stream_graphs(data, config.graph, limit=None if largest else n_batches * bs)
    items = [graphs[i] for i in range(len(graphs))]
    if largest:
        items = sorted(items, key=lambda g: -len(g["z"]))[:n_batches * bs]
    return [collate(items[k:k + bs], config.graph) for k in range(0, len(items), bs)][:n_batches]


def throughput_and_share(data: str, config: PretrainConfig, n_batches: int, repeats: int,
                         largest: bool = False) -> dict:
    """Step times on ``n_batches`` batches of the first structures of ``data`` (``largest``: of
    the structures with the most atoms instead)."""
    batches = load_batches(data, config, n_batches, largest)
    torch.manual_seed(0)
    model = PretrainModel(config)
    res = {"structures": sum(int(b.num_graphs) for b in batches),
           "atoms_per_structure": sum(int(b.num_nodes) for b in batches) / sum(int(b.num_graphs) for b in batches)}
    res.update({f"step_s_{mode}": t for mode, t in time_steps(model, batches, repeats).items()})
    return res


def angular_cost(data: str, config: PretrainConfig, n_batches: int, repeats: int, orders: int) -> dict:
    """Median seconds per full pretraining step (the four tasks) without and with the bond
    orientations ``q_1 … q_orders`` in the encoder input, alternating batch by batch."""
    from dataclasses import replace

    batches = load_batches(data, config, n_batches)
    models = {}
    for name, n in (("distances only", 0), (f"with q_1…q_{orders}", orders)):
        torch.manual_seed(0)
        cfg = replace(config, encoder=replace(config.encoder, angular_orders=n))
        model = PretrainModel(cfg)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats + 1):
        for batch in batches:
            for name, (model, opt) in models.items():
                t0 = time.perf_counter()
                loss, _ = model(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if r > 0:
                    times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def rss_child(data: str, steps: int, threads: int) -> None:
    """Stream the corpus into the cache and run ``steps`` pretraining steps; print peak memory as JSON."""
    torch.set_num_threads(threads)
    config = load_pretrain_config(None, ["loader_workers=0"])
    t0 = time.perf_counter()
    graphs = stream_graphs(data, config.graph, workers=1)
    t_read = time.perf_counter() - t0
    peak_anon = rss_anon_kib()
    torch.manual_seed(0)
    model = PretrainModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(GraphDataset(graphs), batch_size=config.batch_size, shuffle=True,
                                         collate_fn=lambda items: collate(items, config.graph))
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss, _ = model(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            peak_anon = max(peak_anon, rss_anon_kib())
            done += 1
            if done >= steps:
                break
    print(json.dumps({"structures": len(graphs), "steps": done, "read_s": t_read,
                      "train_s": time.perf_counter() - t0, "ru_maxrss_mib": resource.getrusage(
                          resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_anon_mib": peak_anon / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="pretraining corpus (JSONL.gz)")
    ap.add_argument("--batches", type=int, default=4, help="batches of 128 timed for throughput and head share")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over those batches")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each memory run")
    ap.add_argument("--small", type=int, default=4000, help="structures of the random subset (memory run, timings)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--angular-orders", type=int, default=8, help="orders of the bond-orientation input timed")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.data, args.steps, args.threads)
        return
    torch.set_num_threads(args.threads)
    # CrysGNN as published (distances only, its heads): the tables compare connectivity heads on
    # it; the bond-orientation table adds the one input of the default config that costs time
    config = load_pretrain_config(Path(__file__).resolve().parents[1] / "configs" / "crysgnn.yaml")
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {config.batch_size}")
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        subset = str(random_subset(args.data, args.small, Path(tmp) / "subset.jsonl.gz"))
        report(args, config, subset)


def report(args: argparse.Namespace, config: PretrainConfig, subset: str) -> None:
    """Time the steps on ``subset`` and measure memory on ``subset`` and the corpus; print the tables."""
    bs = config.batch_size
    for title, largest in (("drawn at random from the corpus", False),
                           (f"with the most atoms among those {args.small:,}", True)):
        r = throughput_and_share(subset, config, args.batches, args.repeats, largest=largest)
        full, none, ap2 = r["step_s_sampled"], r["step_s_none"], r["step_s_all_pairs"]
        print(f"\n## Pretraining steps: {r['structures']} structures {title} "
              f"({r['atoms_per_structure']:.1f} atoms each on average)\n")
        print("| step | s / step | structures / s | ratio to crysdistill |")
        print("|---|---|---|---|")
        for name, t in (("crysdistill (sampled connectivity)", full),
                        ("all-pairs O(N²) connectivity (CrysGNN)", ap2), ("without the connectivity task", none)):
            print(f"| {name} | {t:.3f} | {bs / t:.1f} | {t / full:.2f}× |")
        print("\n| connectivity task | s / step in the task | share of the step | ratio |")
        print("|---|---|---|---|")
        print(f"| sampled pairs, 1 negative per neighbour pair | {full - none:.3f} | "
              f"{max(full - none, 0.0) / full:.1%} | 1.00× |")
        print(f"| all ordered pairs of each cell | {ap2 - none:.3f} | {max(ap2 - none, 0.0) / ap2:.1%} | "
              f"{(ap2 - none) / max(full - none, 1e-9):.1f}× |")
    cost = angular_cost(subset, config, args.batches, args.repeats, args.angular_orders)
    base = next(iter(cost.values()))
    print(f"\n## Bond orientations in the encoder input ({args.batches} batches of {bs} drawn at random, all four "
          "CrysGNN tasks)\n")
    print("| encoder input | s / step | structures / s | ratio to distances only |")
    print("|---|---|---|---|")
    for name, t in cost.items():
        print(f"| {name} | {t:.3f} | {bs / t:.1f} | {t / base:.2f}× |")
    if args.skip_memory:
        return
    rows = []
    for source in (subset, args.data):
        cmd = [sys.executable, __file__, "--rss-child", "--data", source, "--steps", str(args.steps),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"\n## Peak memory of pretraining ({args.steps} steps of batch {bs}, fresh process each; the small "
          "corpus is a random subset of the large one)\n")
    print("| structures | read + cache (s) | ru_maxrss (MiB) | peak anonymous RSS (MiB) | ratio (ru_maxrss) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['structures']:,} | {row['read_s']:.0f} | {row['ru_maxrss_mib']:.0f} | "
              f"{row['peak_rss_anon_mib']:.0f} | {row['ru_maxrss_mib'] / rows[0]['ru_maxrss_mib']:.2f}× |")


if __name__ == "__main__":
    main()
