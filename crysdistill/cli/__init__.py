"""The ``crysdistill`` command: thin subcommands that call the library and return exit codes.

Each subcommand module registers its parsers with ``register(subparsers)`` and sets ``func``, a
function ``(argparse.Namespace) -> int``. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from crysdistill import __version__
from crysdistill.errors import UserError

_MODULES = ("crysdistill.cli.data", "crysdistill.cli.teacher", "crysdistill.cli.students", "crysdistill.cli.distill",
            "crysdistill.cli.finetune", "crysdistill.cli.analysis")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommand modules imported lazily, heavy imports deferred)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="crysdistill",
        description="Distil crystal graph teachers (universal potentials or self-supervised CrysGNN) into crystal "
        "property predictors.",
    )
    parser.add_argument("--version", action="version", version=f"crysdistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # subcommand module not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # key=value overrides may stand between flags: argparse leaves the later ones unparsed
    if unknown and hasattr(args, "overrides") and all("=" in u and not u.startswith("-") for u in unknown):
        args.overrides = list(args.overrides or []) + unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"crysdistill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("crysdistill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
