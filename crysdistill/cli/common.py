"""Arguments and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crysdistill.utils import build_progress, progress_bar  # noqa: F401  (re-exported for subcommands)

SAMPLE_NAME = "sample"
#: Bundled samples by name: ``sample`` and ``sample:<name>`` (see ``crysdistill/data/sample/README.md``).
SAMPLES = {"sample": "mp_eform_flla2015_sample.jsonl.gz", "sample:elasticity": "mp_elasticity_dejong2015.jsonl.gz"}


def sample_path(name: str = SAMPLE_NAME) -> Path:
    """A bundled sample: ``sample`` (400 Materials Project structures with formation energies) or
    ``sample:elasticity`` (the 1,181 elastic moduli of de Jong et al. 2015)."""
    return Path(__file__).resolve().parent.parent / "data" / "sample" / SAMPLES[name]


def resolve_data(path: str) -> str:
    """``sample`` / ``sample:elasticity`` → the bundled samples; anything else unchanged."""
    return str(sample_path(path)) if path in SAMPLES else path


def data_of(args: argparse.Namespace, on_error: str):
    """What ``--data`` (and ``--limit``) name: a path, or the :class:`Dataset` of the first ``--limit`` records."""
    data = resolve_data(args.data)
    if getattr(args, "limit", None) is None:
        return data
    from crysdistill.data.readers import read_dataset

    return read_dataset(data, on_error=on_error, limit=args.limit)


def print_run(what: str, summary: dict, out) -> None:
    """The closing line of a training command: what was trained, validation and test MAE, sizes, time."""
    import sys

    if summary.get("n_skipped"):
        print(f"{summary['n_skipped']} structure(s) skipped (see --on-error)", file=sys.stderr)
    test = "n/a" if summary["test_mae"] is None else f"{summary['test_mae']:.4g}"
    print(f"{what}: val MAE {summary['val_mae']:.4g} (epoch {summary['best_epoch']}), test MAE {test}  "
          f"[n_train {summary['n_train']}, n_val {summary['n_val']}, n_test {summary['n_test']}; "
          f"{summary['seconds']:.0f} s] -> {out}")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data``, ``--on-error``, ``--cache-dir``, ``--workers``, ``--limit``."""
    p.add_argument("--data", required=required, metavar="PATH",
                   help="JSONL(.gz), JSON, CIF/POSCAR file, folder with id_prop.csv, jarvis:<name>, 'sample' or "
                        "'sample:elasticity'")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad records: stop at the first (raise, default) or skip them with a summary")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="graph cache folder (default $CRYSDISTILL_CACHE or ~/.cache/crysdistill)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for graph building and teacher embeddings (default: min(2, cores))")
    p.add_argument("--limit", type=int, default=None, help="read only the first N records")


def report_problems(problems, what: str = "skipped", limit: int = 10) -> None:
    """Print a short summary of skipped records to stderr."""
    if not problems:
        return
    from collections import Counter

    print(f"{len(problems)} record(s) {what}:", file=sys.stderr)
    for p in problems[:limit]:
        print(f"  {p.record}: {p.reason}", file=sys.stderr)
    if len(problems) > limit:
        reasons = Counter(p.reason.split(" (")[0].split(";")[0] for p in problems)
        print(f"  … and {len(problems) - limit} more; by reason: "
              + "; ".join(f"{n}× {r}" for r, n in reasons.most_common(5)), file=sys.stderr)
