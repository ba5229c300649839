"""Teachers as plugins: the contract (:mod:`.base`) and the entry-point registry (:mod:`.registry`)."""

from crysdistill.teachers.base import TEACHER_API_VERSION, TeacherAdapter, TeacherOutput, TrainingData
from crysdistill.teachers.registry import get_teacher_class, list_teachers, load_teacher

__all__ = ["TEACHER_API_VERSION", "TeacherAdapter", "TeacherOutput", "TrainingData", "get_teacher_class",
           "list_teachers", "load_teacher"]
