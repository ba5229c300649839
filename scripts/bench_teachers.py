#!/usr/bin/env python
"""Teacher throughput: structures per second for each teacher, next to the package's own inference.

For each teacher and thread count it times, on the same structures:

* ``crysdistill`` — :func:`crysdistill.distill.cache.embed_records` into an empty cache: the
  teacher's ``check`` of every structure, its own graph builder, the forward pass with hooks on
  every layer, L2 normalisation and the write to the LMDB cache (what ``train --teacher`` pays once);
* ``package`` — the package's own public inference on the same structures: CHGNet's
  ``predict_structure(..., task="e", batch_size=…)``, SevenNet's ASE ``SevenNetCalculator``
  (energy and forces, one structure at a time: its public API), the CrysGNN encoder's forward
  pass on prebuilt graphs;
* ``cached`` — the same ``embed_records`` call again (everything from the cache);
* with ``--workers N``, one more row per teacher: ``embed_records(..., workers=N)``, N spawned
  processes with one thread each, their start (loading the teacher in each) included.

The ratio column is crysdistill's throughput over the package's, measured in the same run.
Run it on an otherwise idle machine: ``python scripts/bench_teachers.py --n 200``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sample", help="structures to embed (default: the bundled sample)")
    p.add_argument("--n", type=int, default=200, help="number of structures (default 200)")
    p.add_argument("--teachers", default="crysgnn,chgnet,sevennet")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--workers", type=int, default=2, help="also time N worker processes of one thread (0: skip)")
    return p.parse_args(argv)


def package_inference(teacher, structures) -> None:
    """The package's own public inference on ``structures`` (what a user of the package alone would run)."""
    import torch

    if teacher.name == "chgnet":
        with contextlib.redirect_stdout(io.StringIO()):
            teacher.model.predict_structure(structures, task="e", batch_size=teacher.batch_size)
    elif teacher.name == "sevennet":
        from pymatgen.io.ase import AseAtomsAdaptor
        from sevenn.calculator import SevenNetCalculator

        calc = SevenNetCalculator(teacher.variant, device="cpu")
        for s in structures:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            atoms.get_potential_energy()
    elif teacher.name == "crysgnn":
        from crysdistill.data.batch import collate

        graphs = [teacher._featurizer.featurize(s) for s in structures]
        with torch.no_grad():
            for k in range(0, len(graphs), teacher.batch_size):
                teacher.teacher.encoder(collate(graphs[k:k + teacher.batch_size], teacher.teacher.graph_settings))
    else:
        raise SystemExit(f"no package baseline for teacher {teacher.name!r}")


def main(argv=None) -> int:
    import torch

    from crysdistill.cli.common import resolve_data
    from crysdistill.data.readers import read_dataset
    from crysdistill.distill import cache as cache_module
    from crysdistill.distill.cache import check_records, embed_records
    from crysdistill.teachers.registry import load_teacher

    warnings.filterwarnings("ignore")
    args = parse_args(argv)
    records = read_dataset(resolve_data(args.data), limit=args.n).records
    n_sites = sum(len(r.structure) for r in records) / len(records)
    print(f"{len(records)} structures from {args.data} (mean {n_sites:.1f} sites); torch {torch.__version__}")
    print(f"{'teacher':10s} {'threads':>9s} {'crysdistill/s':>14s} {'package/s':>10s} {'ratio':>6s} {'cached/s':>10s}")
    for name in args.teachers.split(","):
        teacher = load_teacher(name)
        records_ok, _ = check_records(teacher, records, on_error="skip")
        structures = [r.structure for r in records_ok]
        pkg1 = float("nan")
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            package_inference(teacher, structures[:8])  # warm-up (lazy imports, allocator)
            with tempfile.TemporaryDirectory() as cache:
                t0 = time.perf_counter()
                check_records(teacher, records_ok)
                emb = embed_records(teacher, records_ok, list(range(teacher.n_layers + 1)), cache_dir=cache)
                ours = time.perf_counter() - t0
                assert emb.n_computed == len(records_ok)
                t0 = time.perf_counter()
                again = embed_records(teacher, records_ok, list(range(teacher.n_layers + 1)), cache_dir=cache)
                cached = time.perf_counter() - t0
                assert again.n_computed == 0
            t0 = time.perf_counter()
            package_inference(teacher, structures)
            pkg = time.perf_counter() - t0
            n = len(records_ok)
            print(f"{teacher.spec:10s} {threads:9d} {n / ours:14.1f} {n / pkg:10.1f} {pkg / ours:6.2f} {n / cached:10.0f}",
                  flush=True)
            if threads == 1:
                pkg1 = pkg
        if args.workers > 1:
            torch.set_num_threads(1)
            cache_module.MIN_PARALLEL = 0  # time the workers even on a small set
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                emb = embed_records(teacher, records_ok, list(range(teacher.n_layers + 1)), cache_dir=tmp,
                                    workers=args.workers)
                ours = time.perf_counter() - t0
                assert emb.n_computed == len(records_ok)
            n = len(records_ok)
            print(f"{teacher.spec:10s} {f'{args.workers} proc':>9s} {n / ours:14.1f} {n / pkg1:10.1f} {pkg1 / ours:6.2f} "
                  f"{'':>10s}  (package on 1 thread)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
