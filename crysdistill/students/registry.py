"""Discovery of student adapters through the ``crysdistill.students`` entry-point group."""

from __future__ import annotations

from crysdistill.errors import UserError
from crysdistill.plugins import STUDENTS_GROUP, PluginInfo, list_plugins, load_plugin
from crysdistill.students.base import STUDENT_API_VERSION, StudentAdapter


def list_students(try_load: bool = True) -> list[PluginInfo]:
    """Installed students; with ``try_load`` each one is imported and broken ones carry ``error``."""
    return list_plugins(STUDENTS_GROUP, try_load=try_load, check=_check)


def _check(cls, name: str) -> type[StudentAdapter]:
    if not (isinstance(cls, type) and issubclass(cls, StudentAdapter)):
        raise UserError(f"student {name!r} does not point to a StudentAdapter subclass (got {cls!r})")
    if int(getattr(cls, "api_version", -1)) != STUDENT_API_VERSION:
        raise UserError(
            f"student {name!r} implements adapter API {cls.api_version}, this crysdistill speaks "
            f"{STUDENT_API_VERSION}; upgrade the plugin or crysdistill"
        )
    return cls


def get_student(name: str) -> type[StudentAdapter]:
    """The adapter class registered as ``name``.

    Raises:
        UserError: unknown name (the error lists installed students) or a broken plugin.
    """
    return _check(load_plugin(STUDENTS_GROUP, name, "student"), name)


def build_student(name: str, config: dict | None = None, n_targets: int = 1,
                  extra_atom_features: int = 0) -> StudentAdapter:
    """Instantiate the student ``name``."""
    return get_student(name)(config=config, n_targets=n_targets, extra_atom_features=extra_atom_features)
