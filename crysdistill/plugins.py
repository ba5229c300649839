"""Entry-point plugins: students (``crysdistill.students``), teachers (``crysdistill.teachers``) and pretext
tasks (``crysdistill.pretext``).

Plugins load on demand: listing reads only the metadata, so a broken plugin shows as a warning
where it is listed and never breaks other commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from crysdistill.errors import UserError

STUDENTS_GROUP = "crysdistill.students"
TEACHERS_GROUP = "crysdistill.teachers"
PRETEXT_GROUP = "crysdistill.pretext"


@dataclass
class PluginInfo:
    """One registered plugin.

    Attributes:
        name: the entry-point name (what users type, e.g. ``cgcnn``).
        value: ``module:attribute`` it points to.
        distribution: the installed distribution that registers it, and its version.
        error: why it fails to load (``None`` if it loads or was not tried).
    """

    name: str
    value: str
    distribution: str
    version: str
    error: str | None = None


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    eps = metadata.entry_points(group=group)
    out: dict[str, metadata.EntryPoint] = {}
    for ep in eps:
        out.setdefault(ep.name, ep)  # first on sys.path wins, as for imports
    return out


def list_plugins(group: str, try_load: bool = False, check=None) -> list[PluginInfo]:
    """Registered plugins of ``group``, sorted by name; ``try_load`` imports each to check it.

    Args:
        group: entry-point group.
        try_load: import every plugin; one that fails carries ``error``.
        check: with ``try_load``, ``check(obj, name)`` validates each loaded object and raises
            :class:`UserError` for one that breaks the contract (stored as its ``error``).
    """
    infos = []
    for name, ep in sorted(_entry_points(group).items()):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(name, ep.value, dist.metadata["Name"] if dist else "?", dist.version if dist else "?")
        if try_load:
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin is reported, not raised
                info.error = f"{type(exc).__name__}: {exc}"
            else:
                if check is not None:
                    try:
                        check(obj, name)
                    except UserError as exc:
                        info.error = str(exc)
        infos.append(info)
    return infos


def load_plugin(group: str, name: str, kind: str):
    """Load the plugin ``name`` of ``group``.

    Args:
        group: entry-point group.
        name: plugin name.
        kind: what it is, for messages (``"student"``, ``"pretext task"``).

    Raises:
        UserError: unknown name (listing the installed ones) or a plugin that fails to import.
    """
    eps = _entry_points(group)
    if name not in eps:
        names = ", ".join(sorted(eps)) or "none"
        raise UserError(f"unknown {kind} {name!r}; installed: {names}")
    try:
        return eps[name].load()
    except Exception as exc:
        raise UserError(f"{kind} {name!r} ({eps[name].value}) failed to load: {type(exc).__name__}: {exc}") from None
