"""Distillation: losses, projections and the cache of teacher embeddings."""

from crysdistill.distill.losses import DistillationLoss, TeacherTargets, matched_teacher_nodes

__all__ = ["DistillationLoss", "TeacherTargets", "matched_teacher_nodes"]
