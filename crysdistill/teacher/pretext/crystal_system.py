"""Supervised contrastive learning of crystal systems on the graph embedding (CrysGNN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


def supervised_nt_xent(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised NT-Xent (Khosla et al. 2020, "SupCon out") of unit vectors.

    For anchor ``i`` with positives ``P(i)`` (same label, ``p ≠ i``) and all others ``A(i)``:
    ``ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )``.
    The loss is the mean of ``ℓ_i`` over anchors that have at least one positive.

    Args:
        z: ``(B, D)`` L2-normalised embeddings.
        labels: ``(B,)`` class of each row.
        temperature: ``τ``.

    Returns:
        ``(loss, similarity)``: scalar loss and the ``(B, B)`` cosine similarities.
    """
    sim = z @ z.T
    b = z.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = (sim / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    n_pos = pos.sum(dim=1)
    anchor = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / n_pos.clamp(min=1)
    loss = (per_anchor * anchor).sum() / anchor.sum().clamp(min=1)
    return loss, sim


class CrystalSystemContrastive(PretextTask):
    """Pull graph embeddings of the same crystal system together, push the others apart.

    Graph embeddings are L2-normalised; positives are the other structures of the batch with the
    same ``batch.crystal_system`` (7 classes); structures with an unknown system (``-1``) are left
    out (counted in ``unknown``). Accuracy: the most similar other structure in the batch has the
    same crystal system (in-batch 1-nearest-neighbour).

    Args:
        temperature: NT-Xent temperature ``τ`` (0.07 in CrysGNN).
        projection: ``0`` (default, CrysGNN: no parameters) contrasts the graph embedding itself;
            ``p > 0`` contrasts ``Linear(D, p) → SiLU → Linear(p, p)`` of it, the projection head
            of SimCLR, so that the clustering by crystal system need not squeeze out of the
            embedding what the other tasks (space group above all) need.
    """

    needs_symmetry = True

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 temperature: float = 0.07, projection: int = 0) -> None:
        super().__init__(width, settings, weight)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not isinstance(projection, int) or projection < 0:
            raise ValueError(f"projection must be a whole number >= 0 (0: no projection head), got {projection!r}")
        self.temperature = float(temperature)
        self.projection = (nn.Sequential(nn.Linear(width, projection), nn.SiLU(), nn.Linear(projection, projection))
                           if projection else None)

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """``out.graph`` ``(B, D)`` with ``batch.crystal_system`` ``(B,)``."""
        labels = batch.crystal_system.view(-1)
        known = labels >= 0
        g = out.graph[known]
        z = F.normalize(self.projection(g) if self.projection is not None else g, dim=-1)
        y = labels[known]
        if z.shape[0] < 2:
            # zero loss that still touches every parameter, so data-parallel gradients line up
            loss = out.graph.sum() * 0.0
            if self.projection is not None:
                loss = loss + self.projection(out.graph[:1]).sum() * 0.0
            correct = torch.zeros((), dtype=torch.float64)
            total = torch.zeros((), dtype=torch.float64)
        else:
            loss, sim = supervised_nt_xent(z, y, self.temperature)
            with torch.no_grad():
                nearest = sim.detach().clone().fill_diagonal_(float("-inf")).argmax(dim=1)
                correct = (y[nearest] == y).sum().to(torch.float64)
                total = torch.tensor(float(z.shape[0]), dtype=torch.float64)
        unknown = (~known).sum().to(torch.float64)
        return PretextResult(loss, {"correct": correct, "total": total, "unknown": unknown})
