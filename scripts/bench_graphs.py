#!/usr/bin/env python
"""Benchmark crysdistill's crystal-graph builder and graph cache against the usual baselines.

Three measurements, all in one run so that every ratio compares figures taken on the same machine
under the same load:

1. Graph building, one process, on ``--n`` structures of
   ``mp_cgcnn_eform_gap_efermi_magmom.jsonl.gz`` (parsed once, before any timing):
   (a) ``CrystalGraphFeaturizer`` (neighbour part, ``symmetry=False``; symmetry labels timed
   separately), (b) the CGCNN/CrysGNN way: ``Structure.get_all_neighbors`` per structure, sorted by
   distance, first 12, Gaussian expansion, (c) ``Structure.get_neighbor_list`` with a per-atom
   Python grouping loop. Every structure's neighbour lists are compared between the builders
   (tie-robust: same sorted distances per atom, same ``(j, image)`` set below the last kept
   distance).
2. Reading the same graphs back from the LMDB cache: ``GraphSet.__getitem__`` alone, and with
   collation into torch-geometric batches of 128.
3. Building the cache of the whole pretraining corpus (``pretrain_unlabelled.jsonl.gz``) with
   ``--workers`` processes in a fresh cache folder under /tmp, in a child process so that its peak
   memory is its own: reading time, building time, disk size, peak RSS of the process and of its
   workers.

Usage::

    .venv/bin/python scripts/bench_graphs.py                 # everything, defaults below
    .venv/bin/python scripts/bench_graphs.py --n 500 --skip-corpus

``--select split`` (default) takes rows ``perm[:n]`` of the split in ``../shared/ANCHORS.md``
(``numpy.random.default_rng(0).permutation(36737)``; mean 25.5 sites for n = 2000), the rows the
figures there were measured on; ``--select first`` takes the first ``n`` rows of the file (these
are smaller: mean 13.7 sites for n = 2000).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from crysdistill.data.batch import collate
from crysdistill.data.cache import build_graphs
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.data.readers import read_dataset
from crysdistill.data.records import Record
from crysdistill.data.symmetry import space_group_number

LABELLED = "mp_cgcnn_eform_gap_efermi_magmom.jsonl.gz"
CORPUS = "pretrain_unlabelled.jsonl.gz"
N_ROWS_LABELLED = 36737
CUTOFF, MAX_NBR, STEP, WIDTH = 8.0, 12, 0.2, 0.2

#: one neighbour list per structure: per atom, a list of (j, image, distance) nearest first
NeighborLists = list[list[tuple[int, tuple[int, int, int], float]]]


# --------------------------------------------------------------------------------------------
# loading


def load_structures(path: Path, n: int, select: str) -> tuple[list[Structure], list[str], float]:
    """Parse the chosen rows into pymatgen structures; returns structures, ids and parse seconds."""
    if select == "split":
        wanted = np.random.default_rng(0).permutation(N_ROWS_LABELLED)[:n]
    else:
        wanted = np.arange(n)
    position = {int(row): k for k, row in enumerate(wanted)}
    lines: list[str | None] = [None] * len(wanted)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for row, line in enumerate(fh):
            k = position.get(row)
            if k is not None:
                lines[k] = line
            if select == "first" and row + 1 >= n:
                break
    if any(line is None for line in lines):
        raise SystemExit(f"{path}: fewer rows than requested")
    t0 = time.perf_counter()
    objs = [json.loads(line) for line in lines]  # type: ignore[arg-type]
    structures = [Structure.from_dict(o["structure"]) for o in objs]
    return structures, [str(o["id"]) for o in objs], time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# the three builders (each returns what the graph needs; timed without parsing)

CENTERS = np.arange(0.0, CUTOFF + STEP / 2, STEP)  # 41 centres, as CGCNN's GaussianDistance


def gaussian(d: np.ndarray) -> np.ndarray:
    """CGCNN's Gaussian expansion, ``exp(-(d - mu)^2 / width^2)``."""
    return np.exp(-((d[..., None] - CENTERS) ** 2) / WIDTH**2)


def build_ours(s: Structure, featurizer: CrystalGraphFeaturizer) -> dict[str, np.ndarray]:
    return featurizer.featurize(s)


def build_ours_with_gaussians(s: Structure, featurizer: CrystalGraphFeaturizer) -> dict[str, np.ndarray]:
    g = featurizer.featurize(s)
    g["edge_attr"] = gaussian(g["distance"])
    return g


def build_cgcnn(s: Structure) -> tuple[list, np.ndarray, np.ndarray]:
    """CGCNN ``CIFData.__getitem__``'s neighbour part (padding never triggers at 8 Å)."""
    all_nbrs = s.get_all_neighbors(CUTOFF, include_index=True)
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
    nbr_fea_idx, nbr_fea = [], []
    for nbr in all_nbrs:
        if len(nbr) < MAX_NBR:
            nbr_fea_idx.append([x[2] for x in nbr] + [0] * (MAX_NBR - len(nbr)))
            nbr_fea.append([x[1] for x in nbr] + [CUTOFF + 1.0] * (MAX_NBR - len(nbr)))
        else:
            nbr_fea_idx.append([x[2] for x in nbr[:MAX_NBR]])
            nbr_fea.append([x[1] for x in nbr[:MAX_NBR]])
    nbr_fea_idx, nbr_fea = np.array(nbr_fea_idx), np.array(nbr_fea)
    return [nbrs[:MAX_NBR] for nbrs in all_nbrs], nbr_fea_idx, gaussian(nbr_fea)


def build_neighbor_list_loop(s: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``Structure.get_neighbor_list`` once, then a Python loop over atoms to keep the nearest 12."""
    center, neighbor, image, dist = s.get_neighbor_list(CUTOFF)
    rows_j, rows_i, rows_img, rows_d = [], [], [], []
    for i in range(len(s)):
        idx = np.flatnonzero(center == i)
        order = idx[np.argsort(dist[idx], kind="stable")[:MAX_NBR]]
        rows_j.append(neighbor[order])
        rows_i.append(np.full(len(order), i))
        rows_img.append(image[order])
        rows_d.append(dist[order])
    j, i, img, d = (np.concatenate(x) for x in (rows_j, rows_i, rows_img, rows_d))
    return np.stack([j, i]), img, d, gaussian(d)


# --------------------------------------------------------------------------------------------
# comparison


def lists_from_ours(g: dict[str, np.ndarray]) -> NeighborLists:
    j, i = g["edge_index"]
    out: NeighborLists = [[] for _ in range(len(g["z"]))]
    for a, b, im, d in zip(j.tolist(), i.tolist(), g["image"].tolist(), g["distance"].tolist()):
        out[b].append((a, tuple(im), d))
    return out


def lists_from_cgcnn(kept: list) -> NeighborLists:
    return [[(n.index, tuple(int(round(x)) for x in n.image), n.nn_distance) for n in nbrs] for nbrs in kept]


def lists_from_loop(edge_index: np.ndarray, image: np.ndarray, dist: np.ndarray, n_atoms: int) -> NeighborLists:
    out: NeighborLists = [[] for _ in range(n_atoms)]
    for a, b, im, d in zip(edge_index[0].tolist(), edge_index[1].tolist(), image.astype(int).tolist(), dist.tolist()):
        out[b].append((a, tuple(im), d))
    return out


def same_neighbors(a: NeighborLists, b: NeighborLists, tol: float = 1e-4) -> bool:
    """Tie-robust: per atom the same sorted distances and the same ``(j, image)`` set strictly
    below the last kept distance (neighbours tied at that distance may be chosen differently)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        dx, dy = np.sort([t[2] for t in x]), np.sort([t[2] for t in y])
        if len(dx) != len(dy) or not np.allclose(dx, dy, atol=tol, rtol=0):
            return False
        if not len(dx):
            continue
        last = dy[-1] - tol
        if {t[:2] for t in x if t[2] < last} != {t[:2] for t in y if t[2] < last}:
            return False
    return True


# --------------------------------------------------------------------------------------------
# timing helpers


def timed(fn: Callable[[Structure], Any], structures: Sequence[Structure], repeat: int) -> tuple[float, list]:
    """Best-of-``repeat`` wall time of ``fn`` over all structures, and the outputs of the last pass."""
    best, outs = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outs = [fn(s) for s in structures]
        best = min(best, time.perf_counter() - t0)
    return best, outs


def row(name: str, n: int, seconds: float, reference: float | None = None, note: str = "") -> dict:
    rate = n / seconds
    return {"name": name, "n": n, "seconds": seconds, "per_s": rate, "ms_each": 1000 * seconds / n,
            "vs": None if reference is None else rate / reference, "note": note}


def print_table(title: str, rows: list[dict], ratio_label: str) -> None:
    print(f"\n### {title}\n")
    print(f"| builder | structures | seconds | structures/s | ms/structure | {ratio_label} | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        vs = "" if r["vs"] is None else f"{r['vs']:.2f}×"
        print(f"| {r['name']} | {r['n']} | {r['seconds']:.2f} | {r['per_s']:.0f} | {r['ms_each']:.2f} | {vs} | "
              f"{r['note']} |")


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------
# sections


def bench_builders(structures: list[Structure], repeat: int) -> dict:
    n = len(structures)
    fast = CrystalGraphFeaturizer(GraphSettings(symmetry=False))
    full = CrystalGraphFeaturizer(GraphSettings())
    fast.featurize(structures[0])  # load the atom feature table outside the timing
    t_ours, ours = timed(lambda s: build_ours(s, fast), structures, repeat)
    t_ours_g, _ = timed(lambda s: build_ours_with_gaussians(s, fast), structures, repeat)
    t_loop, loop = timed(build_neighbor_list_loop, structures, repeat)
    t_cgcnn, cgcnn = timed(build_cgcnn, structures, 1)
    settings = full.graph_settings
    t_sym, _ = timed(lambda s: space_group_number(s.lattice.matrix, s.frac_coords, np.asarray(s.atomic_numbers),
                                                  settings.symprec, settings.angle_tolerance), structures, 1)
    t_full, _ = timed(full.featurize, structures, 1)

    ref_cgcnn = [lists_from_cgcnn(kept) for kept, _, _ in cgcnn]
    mism_ours = [k for k in range(n) if not same_neighbors(lists_from_ours(ours[k]), ref_cgcnn[k])]
    mism_loop = [k for k in range(n) if not same_neighbors(
        lists_from_loop(loop[k][0], loop[k][1], loop[k][2], len(structures[k])), ref_cgcnn[k])]
    faster = max(n / t_cgcnn, n / t_loop)
    rows = [
        row("(a) crysdistill `CrystalGraphFeaturizer` (symmetry=False)", n, t_ours, faster,
            f"best of {repeat}; Gaussians deferred to collate"),
        row("(a') same + numpy Gaussian expansion", n, t_ours_g, faster, f"best of {repeat}; like-for-like with (b), (c)"),
        row("(b) CGCNN/CrysGNN: `get_all_neighbors` per structure, sort, first 12, Gaussians", n, t_cgcnn, faster,
            "one pass"),
        row("(c) `get_neighbor_list` + per-atom Python loop, first 12, Gaussians", n, t_loop, faster,
            f"best of {repeat}"),
        row("symmetry labels alone (spglib, symprec 0.01, angle 5°)", n, t_sym, faster, "one pass"),
        row("(a) with symmetry labels (the default featuriser)", n, t_full, faster, "one pass"),
    ]
    return {"rows": rows, "compared": n, "mismatch_ours_vs_cgcnn": mism_ours, "mismatch_loop_vs_cgcnn": mism_loop,
            "ours_vs_cgcnn": (n / t_ours) / (n / t_cgcnn), "ours_vs_loop": (n / t_ours) / (n / t_loop),
            "mean_edges": float(np.mean([g["edge_index"].shape[1] for g in ours]))}


def bench_readback(structures: list[Structure], ids: list[str], cache_root: Path, workers: int) -> dict:
    settings = GraphSettings()
    records = [Record(i, s) for i, s in zip(ids, structures)]
    t0 = time.perf_counter()
    gs = build_graphs(records, CrystalGraphFeaturizer(settings), cache_root, workers=workers)
    t_build = time.perf_counter() - t0
    n = len(gs)
    t0 = time.perf_counter()
    graphs = [gs[i] for i in range(n)]
    t_get = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_batches = 0
    for start in range(0, n, 128):
        batch = collate([gs[i] for i in range(start, min(n, start + 128))], settings)
        n_batches += 1
    t_collate = time.perf_counter() - t0
    second = build_graphs(records, CrystalGraphFeaturizer(settings), cache_root, workers=workers)
    assert second.n_built == 0
    del graphs, batch
    return {"rows": [
        row(f"build the cache ({workers} workers, with symmetry labels)", n, t_build, None, "fresh folder"),
        row("`GraphSet[i]` (LMDB read + unpack)", n, t_get, n / t_build, "page cache warm"),
        row(f"`GraphSet[i]` + `collate` into PyG batches of 128 ({n_batches} batches)", n, t_collate, n / t_build,
            "incl. atom features and 41 Gaussians"),
    ], "store_bytes": gs.store.size_bytes()}


def bench_corpus(path: Path, workers: int, limit: int | None) -> dict:
    """Run in a child process: read and featurise the corpus into a fresh cache under /tmp."""
    cache_root = Path(tempfile.mkdtemp(prefix="bench-graphs-corpus-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        ds = read_dataset(path, on_error="skip", limit=limit)
        t_read = time.perf_counter() - t0
        rss_after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        gs = build_graphs(ds.records, CrystalGraphFeaturizer(GraphSettings()), cache_root, workers=workers,
                          on_error="skip")
        t_build = time.perf_counter() - t0
        data = gs.store.path / "data.mdb"
        st = data.stat()
        return {
            "n_read": len(ds), "n_graphs": len(gs), "n_problems": len(ds.problems) + len(gs.problems),
            "problems": [f"{p.record}: {p.reason}" for p in (ds.problems + gs.problems)[:5]],
            "sites_mean": float(np.mean([len(r.structure) for r in ds.records])),
            "seconds_read": t_read, "seconds_build": t_build, "workers": workers,
            "store_bytes": st.st_size, "store_allocated_bytes": st.st_blocks * 512,
            "maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "maxrss_self_after_read": rss_after_read,
            "maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        }
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/work/shared/data"), help="folder of the shared data")
    p.add_argument("--n", type=int, default=2000, help="structures for the builder comparison (default 2000)")
    p.add_argument("--select", choices=("split", "first"), default="split",
                   help="split: rows perm[:n] of the ANCHORS split (default); first: the first n rows")
    p.add_argument("--repeat", type=int, default=3, help="passes of the fast builders; the best counts")
    p.add_argument("--workers", type=int, default=2, help="processes for building caches (default 2)")
    p.add_argument("--corpus-limit", type=int, default=None, help="read only this many corpus rows")
    p.add_argument("--skip-corpus", action="store_true", help="skip the corpus cache build")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--corpus-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.corpus_child:  # the child of section 3: report on stdout as JSON
        print(json.dumps(bench_corpus(args.data / CORPUS, args.workers, args.corpus_limit)))
        return 0
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, {platform.python_version()}",
        "load_before": os.getloadavg(),
    }
    print(f"# bench_graphs  {results['date']}  ({results['machine']}; load {results['load_before'][0]:.2f})")
    structures, ids, t_parse = load_structures(args.data / LABELLED, args.n, args.select)
    n_sites = np.array([len(s) for s in structures])
    print(f"\n{len(structures)} structures of {LABELLED} (--select {args.select}): mean {n_sites.mean():.1f} sites, "
          f"max {n_sites.max()}; parsing took {t_parse:.1f} s ({len(structures) / t_parse:.0f}/s), excluded below")
    results["sample"] = {"n": len(structures), "select": args.select, "sites_mean": float(n_sites.mean()),
                         "parse_seconds": t_parse}

    b = bench_builders(structures, args.repeat)
    results["builders"] = b
    print_table("Graph building, one process", b["rows"], "vs faster baseline")
    print(f"\nneighbour lists compared on {b['compared']} structures (tie-robust): (a) vs (b) "
          f"{len(b['mismatch_ours_vs_cgcnn'])} mismatched, (c) vs (b) {len(b['mismatch_loop_vs_cgcnn'])} mismatched; "
          f"mean {b['mean_edges']:.0f} edges per structure")
    print(f"(a) is {b['ours_vs_cgcnn']:.1f}× (b) and {b['ours_vs_loop']:.2f}× (c)")

    with tempfile.TemporaryDirectory(prefix="bench-graphs-readback-", dir="/tmp") as tmp:
        r = bench_readback(structures, ids, Path(tmp), args.workers)
    results["readback"] = r
    print_table("Reading the same graphs back from the cache", r["rows"], "vs building")
    print(f"\ncache of {len(structures)} graphs: {mib(r['store_bytes'])}")

    if not args.skip_corpus:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--corpus-child", "--data", str(args.data),
               "--workers", str(args.workers)]
        if args.corpus_limit:
            cmd += ["--corpus-limit", str(args.corpus_limit)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        c = json.loads(proc.stdout.strip().splitlines()[-1])
        c["wall_child"] = wall
        results["corpus"] = c
        print(f"\n### Cache of the pretraining corpus ({CORPUS}), {c['workers']} workers, fresh folder under /tmp\n")
        print("| step | figure |")
        print("|---|---|")
        print(f"| structures read / with graphs / skipped | {c['n_read']} / {c['n_graphs']} / {c['n_problems']} |")
        print(f"| mean sites | {c['sites_mean']:.1f} |")
        print(f"| reading + parsing + checks (1 process) | {c['seconds_read']:.0f} s "
              f"({c['n_read'] / c['seconds_read']:.0f} structures/s) |")
        print(f"| graph building incl. symmetry labels ({c['workers']} workers) | {c['seconds_build']:.0f} s "
              f"({c['n_graphs'] / c['seconds_build']:.0f} structures/s) |")
        print(f"| whole child process (incl. interpreter start) | {c['wall_child']:.0f} s |")
        print(f"| disk size of the store (data.mdb: size / allocated) | {mib(c['store_bytes'])} / "
              f"{mib(c['store_allocated_bytes'])} |")
        print(f"| peak RSS, main process (after reading / at the end) | {mib(c['maxrss_self_after_read'])} / "
              f"{mib(c['maxrss_self'])} |")
        print(f"| peak RSS, largest worker process | {mib(c['maxrss_children'])} |")
        if c["problems"]:
            print("\nfirst problems: " + "; ".join(c["problems"]))
    results["load_after"] = os.getloadavg()
    print(f"\nload average before / after: {results['load_before'][0]:.2f} / {results['load_after'][0]:.2f} "
          f"(2 cores, shared)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
