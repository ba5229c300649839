"""Students: the adapter contract and the entry-point registry."""

from crysdistill.students.base import STUDENT_API_VERSION, StudentAdapter, StudentOutput
from crysdistill.students.registry import build_student, get_student, list_students

__all__ = ["STUDENT_API_VERSION", "StudentAdapter", "StudentOutput", "build_student", "get_student", "list_students"]
