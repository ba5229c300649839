"""Node feature reconstruction: recover the 92 input bits of every atom from its embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


class NodeFeatureReconstruction(PretextTask):
    """Linear ``D → F`` decoder of the atom feature vector, binary cross-entropy per bit (CrysGNN).

    The input is not masked (as in CrysGNN): the task keeps the element identity recoverable from
    the final, normalised atom embedding. Accuracy counts bits predicted correctly (logit > 0
    ⇔ bit set) over all ``N · F`` bits.
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25) -> None:
        super().__init__(width, settings, weight)
        self.head = nn.Linear(width, settings.atom_feature_dim)

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """``out.node`` ``(N, D)`` → logits ``(N, F)`` against ``batch.x`` ``(N, F)``."""
        logits = self.head(out.node)
        target = batch.x.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            correct = ((logits > 0) == (target > 0.5)).sum().to(torch.float64)
        return PretextResult(loss, {"correct": correct, "total": torch.tensor(float(target.numel()), dtype=torch.float64)})
