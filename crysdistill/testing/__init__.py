"""Test helpers shipped with crysdistill: the conformance suites every student adapter and every
teacher plugin subclasses.

``from crysdistill.testing import StudentConformance`` needs pytest (the ``test`` extra). The
conformance module's asserts are rewritten by pytest, so failures show the compared values.
"""

import pytest

pytest.register_assert_rewrite("crysdistill.testing.conformance", "crysdistill.testing.teachers")

from crysdistill.testing.conformance import StudentConformance, fixture_structures  # noqa: E402
from crysdistill.testing.teachers import TeacherConformance  # noqa: E402

__all__ = ["StudentConformance", "TeacherConformance", "fixture_structures"]
