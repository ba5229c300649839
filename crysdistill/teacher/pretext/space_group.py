"""Space-group classification of the graph embedding (230 classes, labels from spglib)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask

N_SPACE_GROUPS = 230


class SpaceGroupClassification(PretextTask):
    """``D → 230`` on the graph embedding, cross-entropy on ``batch.spg - 1`` (CrysGNN).

    Structures spglib could not analyse (``spg == -1``) are left out of the loss and counted in
    ``unknown``. Counts: ``correct`` (top-1), ``correct5`` (top-5), ``total`` (labelled graphs).

    Args:
        hidden: ``0`` (default, CrysGNN) for a linear head; ``h > 0`` for one hidden layer,
            ``Linear(D, h) → SiLU → Linear(h, 230)``.
    """

    needs_symmetry = True

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 hidden: int = 0) -> None:
        super().__init__(width, settings, weight)
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be a whole number >= 0 (0: a linear head), got {hidden!r}")
        self.head = (nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, N_SPACE_GROUPS))
                     if hidden else nn.Linear(width, N_SPACE_GROUPS))

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """``out.graph`` ``(B, D)`` → logits ``(B, 230)`` against ``batch.spg`` ``(B,)``."""
        logits = self.head(out.graph)
        spg = batch.spg.view(-1)
        known = (spg >= 1) & (spg <= N_SPACE_GROUPS)
        target = (spg - 1).clamp(min=0)
        per_graph = F.cross_entropy(logits, target, reduction="none")
        n = known.sum()
        # an all-unknown batch still touches the head (zero loss) so data-parallel gradients line up
        loss = (per_graph * known).sum() / n.clamp(min=1)
        with torch.no_grad():
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit5 = (top5 == target.unsqueeze(1)).any(dim=1)
            hit1 = top5[:, 0] == target
            counts = {
                "correct": (hit1 & known).sum().to(torch.float64),
                "correct5": (hit5 & known).sum().to(torch.float64),
                "total": n.to(torch.float64),
                "unknown": (~known).sum().to(torch.float64),
            }
        return PretextResult(loss, counts)
