"""``crysdistill data …``: look at a dataset before training on it."""

from __future__ import annotations

import argparse
import json

from crysdistill.cli.common import add_data_args, build_progress, resolve_data


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("inspect", help="structures, elements, symmetry, labels and problems of a dataset")
    p.add_argument("path", help="dataset path (see --data of other commands), or 'sample'")
    add_data_args(p, required=False)
    p.set_defaults(on_error="skip")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from crysdistill.data.inspect import format_report, inspect_dataset

    path = resolve_data(args.data or args.path)
    rep = inspect_dataset(path, on_error=args.on_error, cache_dir=args.cache_dir, workers=args.workers,
                          limit=args.limit, progress=None if args.json else build_progress("graphs"))
    print(json.dumps(rep, indent=1) if args.json else format_report(rep))
    return 0
