"""Masked-atom prediction (DSSL, NEGNN): hide the element of 15 % of the atoms and predict it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


class MaskedAtomPrediction(PretextTask):
    """Zero the feature vector of a fresh random ``mask_fraction`` of atoms (at least one per
    crystal), encode the masked crystal again, and classify the element of the masked atoms.

    A second encoder pass per step: it roughly doubles the encoder cost. Classes are the elements
    of the atom-feature table (a linear head ``D → Z_max + 1``; elements outside the table never
    occur as targets).

    Args:
        mask_fraction: share of the atoms of each crystal to mask (0.15 in DSSL and NEGNN).
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 mask_fraction: float = 0.15) -> None:
        super().__init__(width, settings, weight)
        if not 0 < mask_fraction < 1:
            raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")
        self.mask_fraction = float(mask_fraction)
        n_classes = atom_feature_table(settings.atom_features)[0].shape[0]
        self.head = nn.Linear(width, n_classes)

    def mask(self, batch) -> torch.Tensor:
        """``(N,)`` bool: the atoms to mask, ``mask_fraction`` of each crystal and at least one."""
        n = int(batch.num_nodes)
        node_graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
            n, dtype=torch.long, device=batch.x.device)
        score = torch.rand(n, device=batch.x.device)
        # one guaranteed atom per crystal: the one with the lowest score
        low = torch.full((int(node_graph.max()) + 1,), 2.0, device=score.device).scatter_reduce(
            0, node_graph, score, reduce="amin")
        return (score < self.mask_fraction) | (score == low[node_graph])

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """Encodes ``batch.x`` ``(N, F)`` with masked rows zeroed; targets ``batch.z`` ``(N,)``."""
        masked = self.mask(batch)
        x = batch.x.masked_fill(masked.unsqueeze(1), 0.0)
        node = encoder(batch, x=x).node[masked]
        logits = self.head(node)
        target = batch.z[masked]
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == target).sum().to(torch.float64)
        return PretextResult(loss, {"correct": correct, "total": torch.tensor(float(target.numel()), dtype=torch.float64)})
