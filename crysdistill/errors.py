"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input, config or files: shown as one line, never a traceback."""

    exit_code = 2


class RecordError(UserError):
    """A single record (structure) that cannot be used.

    Args:
        record: name of the record, e.g. ``"data.jsonl.gz:17 (mp-1234)"`` or a file path.
        reason: what is wrong with it.
        hint: what the user can do about it.
    """

    def __init__(self, record: str, reason: str, hint: str = "") -> None:
        self.record = record
        self.reason = reason
        self.hint = hint
        msg = f"{record}: {reason}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class ConfigError(UserError):
    """An invalid configuration key or value."""


class CheckpointError(UserError):
    """A checkpoint that is missing, of the wrong kind, or incompatible with the data."""


def run_script(main: Callable[[], int], prog: str) -> None:
    """Run a script's ``main`` and exit with its code; a :class:`UserError` ends in one line.

    For the analysis scripts under ``scripts/``: ``prog: error: <message>`` on stderr, exit code 1.
    """
    try:
        code = main()
    except UserError as exc:
        sys.exit(f"{prog}: error: {exc}")
    sys.exit(code)
