"""Masked-edge distance classification (NEGNN): hide bond lengths, predict them from the atoms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


class MaskedEdgeDistance(PretextTask):
    """Zero the Gaussian features of a fresh random ``mask_fraction`` of the bonds, encode the
    crystal again, and classify each masked bond's length into the graph's distance bins.

    A *bond* is an unordered atom pair at one length: both directions ``j → i`` and ``i → j`` of the
    same bond are masked together, so the length cannot be read off the reverse edge. The classes
    are the Gaussian centres of the edge features (``0, step, …, cutoff``: 41 bins of 0.2 Å for the
    default graph, as in NEGNN); the target is the nearest centre. The head sees only the two end
    atoms' embeddings from the masked pass, symmetrised (``h_i + h_j``, ``h_i ⊙ h_j``), so it must
    learn bond lengths from the atoms and their surroundings. With bond angles in the encoder
    (``encoder.angular_orders``), the masked bonds are left out of the angles as well. A second
    encoder pass per step.

    Args:
        mask_fraction: share of bonds masked each step (0.15 in NEGNN).
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 mask_fraction: float = 0.15) -> None:
        super().__init__(width, settings, weight)
        if not 0 < mask_fraction < 1:
            raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")
        self.mask_fraction = float(mask_fraction)
        self.n_bins = settings.n_gaussians
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.Softplus(), nn.Linear(width, self.n_bins))

    def bond_ids(self, batch) -> torch.Tensor:
        """``(E,)`` id of each edge's bond (unordered pair and length to 1 mÅ); both directions share it."""
        j, i = batch.edge_index
        n = int(batch.num_nodes)
        pair = torch.minimum(i, j) * n + torch.maximum(i, j)
        milli = torch.round(batch.distance.to(torch.float64) * 1000).long()
        return torch.unique(pair * 100_000 + milli, return_inverse=True)[1]

    def mask(self, batch) -> torch.Tensor:
        """``(E,)`` bool: the masked edges (whole bonds, about ``mask_fraction`` of them; at least one)."""
        bond = self.bond_ids(batch)
        score = torch.rand(int(bond.max()) + 1 if bond.numel() else 0, device=bond.device)
        masked = score[bond] < self.mask_fraction
        if bond.numel() and not masked.any():
            masked = bond == score.argmin()
        return masked

    def bins(self, distance: torch.Tensor) -> torch.Tensor:
        """``(E,)`` class of each length: index of the nearest Gaussian centre."""
        return torch.round(distance / self.settings.gaussian_step).long().clamp(0, self.n_bins - 1)

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """Encodes with ``batch.edge_attr`` ``(E, G)`` rows of masked bonds zeroed; targets from
        ``batch.distance`` ``(E,)``."""
        masked = self.mask(batch)
        if not masked.any():  # a batch without edges
            zero = out.node.sum() * 0.0
            return PretextResult(zero, {"correct": torch.zeros((), dtype=torch.float64),
                                        "total": torch.zeros((), dtype=torch.float64)})
        edge_attr = batch.edge_attr.masked_fill(masked.unsqueeze(1), 0.0)
        # with bond angles on, the masked bonds are left out of them too: their directions and the
        # distance weights would otherwise tell the atoms the hidden lengths
        node = encoder(batch, edge_attr=edge_attr, hidden_edges=masked).node
        j, i = batch.edge_index[:, masked]
        logits = self.head(torch.cat([node[i] + node[j], node[i] * node[j]], dim=-1))
        target = self.bins(batch.distance[masked])
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == target).sum().to(torch.float64)
        return PretextResult(loss, {"correct": correct, "total": torch.tensor(float(target.numel()), dtype=torch.float64)})
