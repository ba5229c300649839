"""Student checkpoints that describe themselves: adapter name and config, weights, extras."""

from __future__ import annotations

import os
from typing import Any

from crysdistill.errors import CheckpointError
from crysdistill.students.base import StudentAdapter
from crysdistill.utils import atomic_save, load_checkpoint, versions

KIND = "crysdistill-student"


def save_student(adapter: StudentAdapter, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``adapter`` (config + weights) and any ``extra`` entries atomically.

    ``extra`` must hold only tensors, numbers, strings, lists and dicts (``weights_only`` loading).
    """
    payload = {"kind": KIND, "student": adapter.describe(), "state_dict": adapter.state_dict(),
               "versions": versions(), **extra}
    atomic_save(payload, path)


def load_student(path: str | os.PathLike) -> tuple[StudentAdapter, dict]:
    """Rebuild the adapter saved at ``path`` (through the entry-point registry) and load its weights.

    Returns:
        ``(adapter in eval mode, the whole checkpoint dict)``.
    """
    from crysdistill.students.registry import build_student

    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: is a {ckpt.get('kind')!r} checkpoint, not a student checkpoint")
    d = ckpt["student"]
    adapter = build_student(d["name"], d["config"], n_targets=d["n_targets"],
                            extra_atom_features=d.get("extra_atom_features", 0))
    adapter.load_state_dict(ckpt["state_dict"])
    adapter.eval()
    return adapter, ckpt
