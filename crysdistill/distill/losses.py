"""Distillation losses: pull a student's atom (and optionally structure) embeddings towards the teacher's.

Teacher and student atoms are matched through the site index: the teacher's node ``k`` of a
structure is its site ``k``; every student atom node carries the index of its site
(:attr:`StudentOutput.site_index`), whatever graph the student builds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.students.base import StudentOutput


@dataclass
class TeacherTargets:
    """Cached teacher embeddings for one batch of ``B`` structures.

    Attributes:
        node: ``(S, D_t)`` atom embeddings of all sites of the batch, structure after structure.
        ptr: ``(B + 1,)`` long offsets: the sites of structure ``b`` are rows ``ptr[b]:ptr[b+1]``.
        graph: ``(B, D_t)`` per-structure embeddings.
    """

    node: torch.Tensor
    ptr: torch.Tensor
    graph: torch.Tensor

    def to(self, device: torch.device) -> TeacherTargets:
        return TeacherTargets(self.node.to(device), self.ptr.to(device), self.graph.to(device))


def matched_teacher_nodes(out: StudentOutput, teacher: TeacherTargets) -> torch.Tensor:
    """Teacher embedding of every student atom node: ``(N_student, D_t)``.

    Raises:
        ValueError: a student atom node names a site the teacher does not have.
    """
    idx = teacher.ptr[out.node_batch] + out.site_index
    n_sites = teacher.ptr[out.node_batch + 1] - teacher.ptr[out.node_batch]
    if bool((out.site_index < 0).any()) or bool((out.site_index >= n_sites).any()):
        raise ValueError("student site_index out of range of the teacher's sites: adapter bug")
    return teacher.node[idx]


class DistillationLoss(nn.Module):
    """Node-level (and optional graph-level) embedding distillation with a learnable projection.

    ``loss = node_weight · mean_i ||n(P s_i) − n(t_site(i))||² + graph_weight · mean_b ||n(Q g_b) − n(t_b)||²``
    where ``n`` is L2 normalisation (as CrysGNN) and ``P``/``Q`` are learnable linear projections
    from the student's widths to the teacher's (identity when ``projection=False``, which needs
    equal widths). Each term is a squared distance between unit vectors, ``2 − 2 cos``, in
    ``[0, 4]`` whatever the teacher's width: CrysGNN's element-wise MSE times the width ``D_t``, so
    CrysGNN's setting (α = 0.5 on both terms, ``D_t`` = 64) is ``node_weight = 1/64`` here.

    Args:
        student_dim: width of the student's atom embeddings.
        teacher_dim: width of the teacher's (possibly multi-layer) atom embeddings.
        student_graph_dim: width of the student's structure embedding (default ``student_dim``).
        node_weight: weight of the atom-level term.
        graph_weight: weight of the structure-level term (0 = off).
        projection: learn ``P`` and ``Q``.
    """

    def __init__(self, student_dim: int, teacher_dim: int, student_graph_dim: int | None = None,
                 node_weight: float = 0.1, graph_weight: float = 0.0, projection: bool = True) -> None:
        super().__init__()
        student_graph_dim = student_graph_dim or student_dim
        if not projection and (student_dim != teacher_dim or (graph_weight and student_graph_dim != teacher_dim)):
            from crysdistill.errors import ConfigError

            raise ConfigError(
                f"distillation without projection needs equal widths (student {student_dim}, teacher "
                f"{teacher_dim}); set distill.projection=true"
            )
        self.node_weight = float(node_weight)
        self.graph_weight = float(graph_weight)
        self.node_proj = nn.Linear(student_dim, teacher_dim) if projection else nn.Identity()
        self.graph_proj = nn.Linear(student_graph_dim, teacher_dim) if projection and graph_weight else nn.Identity()

    def forward(self, out: StudentOutput, teacher: TeacherTargets) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the weighted loss and its unweighted parts (``node``, ``graph``)."""
        parts: dict[str, float] = {}
        loss = out.prediction.new_zeros(())
        if self.node_weight:
            s = F.normalize(self.node_proj(out.node_embedding), dim=-1)
            t = F.normalize(matched_teacher_nodes(out, teacher), dim=-1)
            node = (s - t).pow(2).sum(-1).mean()
            loss = loss + self.node_weight * node
            parts["node"] = float(node.detach())
        if self.graph_weight:
            s = F.normalize(self.graph_proj(out.graph_embedding), dim=-1)
            t = F.normalize(teacher.graph, dim=-1)
            graph = (s - t).pow(2).sum(-1).mean()
            loss = loss + self.graph_weight * graph
            parts["graph"] = float(graph.detach())
        return loss, parts
