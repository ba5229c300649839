"""Discovery of teachers through the ``crysdistill.teachers`` entry-point group, and ``--teacher`` specs.

A ``--teacher`` value is resolved in this order:

1. ``name`` or ``name:variant`` where ``name`` is a registered teacher (``chgnet``,
   ``chgnet:0.2.0``, ``sevennet:7net-l3i5``, ``crysgnn:mp-eform``, ``crysgnn:runs/t/teacher.pt``);
2. a value some plugin :meth:`~crysdistill.teachers.base.TeacherAdapter.claims` (the CrysGNN
   plugin claims its shipped names ``default``, ``crysgnn``, ``mp-eform`` and checkpoint paths).
"""

from __future__ import annotations

from crysdistill.errors import UserError
from crysdistill.plugins import TEACHERS_GROUP, PluginInfo, _entry_points, list_plugins, load_plugin
from crysdistill.teachers.base import TEACHER_API_VERSION, TeacherAdapter


def _check(cls, name: str) -> type[TeacherAdapter]:
    if not (isinstance(cls, type) and issubclass(cls, TeacherAdapter)):
        raise UserError(f"teacher {name!r} does not point to a TeacherAdapter subclass (got {cls!r})")
    if int(getattr(cls, "api_version", -1)) != TEACHER_API_VERSION:
        raise UserError(f"teacher {name!r} implements teacher API {cls.api_version}, this crysdistill speaks "
                        f"{TEACHER_API_VERSION}; upgrade the plugin or crysdistill")
    return cls


def list_teachers(try_load: bool = True) -> list[PluginInfo]:
    """Installed teachers; with ``try_load`` each plugin is imported and broken ones carry ``error``."""
    return list_plugins(TEACHERS_GROUP, try_load=try_load, check=_check)


def get_teacher_class(name: str) -> type[TeacherAdapter]:
    """The teacher class registered as ``name``.

    Raises:
        UserError: unknown name (the error lists installed teachers) or a broken plugin.
    """
    return _check(load_plugin(TEACHERS_GROUP, name, "teacher"), name)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``--teacher`` value → ``(plugin name, variant or None)``.

    Raises:
        UserError: a value no plugin recognises (the message lists the installed teachers).
    """
    spec = str(spec).strip()
    names = set(_entry_points(TEACHERS_GROUP))
    if spec in names:
        return spec, None
    head, sep, tail = spec.partition(":")
    if sep and head in names and tail:
        return head, tail
    for name in sorted(names):
        try:
            cls = get_teacher_class(name)
        except UserError:
            continue  # a broken plugin cannot claim anything
        if cls.claims(spec):
            return name, spec
    shipped = []
    for name in sorted(names):
        try:
            cls = get_teacher_class(name)
        except UserError:
            continue
        if cls.claims(cls.default_variant) and cls.variants():  # a plugin whose variants are bare names
            shipped += cls.variants()
    raise UserError(f"unknown teacher {spec!r}: not an installed teacher ({', '.join(sorted(names)) or 'none'}), "
                    f"a shipped CrysGNN teacher ({', '.join(shipped) or 'none'}) or an existing teacher.pt")


def load_teacher(spec: str, device: str = "cpu") -> TeacherAdapter:
    """Load the teacher a ``--teacher`` value names, frozen.

    Raises:
        UserError: unknown teacher or variant, a missing optional package, a bad checkpoint.
    """
    name, variant = split_spec(spec)
    return get_teacher_class(name)(variant, device=device)
