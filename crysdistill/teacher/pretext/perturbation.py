"""Coordinate-perturbation contrast (DSSL): two noisy copies of a crystal, one embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings, gaussian_expansion
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.geometry import edge_lengths, random_displacements
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


class PerturbationContrast(PretextTask):
    """Displace every atom of each crystal twice, independently, by ``min_displacement`` to
    ``max_displacement`` Å in a random direction; encode both copies (the neighbour list is kept,
    edge lengths and their Gaussian features are recomputed) and pull the two graph embeddings of
    the same crystal together.

    * ``loss: cosine`` (DSSL): ``1 − cos(p(g₁), p(g₂))``, no negatives; the other tasks keep the
      embeddings from collapsing.
    * ``loss: nt_xent`` (SimCLR): the other crystals of the batch are negatives, temperature
      ``temperature``.

    ``p`` is a two-layer projection head (SimCLR), so the encoder's own graph embedding is not
    forced to be invariant to everything. Two extra encoder passes per step. Accuracy: the copy of
    each crystal is the most similar embedding among the second copies of the batch (in-batch
    retrieval).

    Args:
        min_displacement: smallest displacement of an atom (Å; DSSL 0.1).
        max_displacement: largest displacement (Å; DSSL 0.5).
        loss: ``"cosine"`` or ``"nt_xent"``.
        temperature: NT-Xent temperature.
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 min_displacement: float = 0.1, max_displacement: float = 0.5, loss: str = "cosine",
                 temperature: float = 0.1) -> None:
        super().__init__(width, settings, weight)
        if not 0 <= min_displacement <= max_displacement:
            raise ValueError("need 0 <= min_displacement <= max_displacement")
        if loss not in ("cosine", "nt_xent"):
            raise ValueError(f"loss must be 'cosine' or 'nt_xent', got {loss!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.low, self.high = float(min_displacement), float(max_displacement)
        self.loss_kind = loss
        self.temperature = float(temperature)
        self.projection = nn.Sequential(nn.Linear(width, width), nn.Softplus(), nn.Linear(width, width))

    def view(self, batch, encoder: CrysGNNEncoder) -> torch.Tensor:
        """``(B, D)`` projected, L2-normalised graph embedding of one randomly displaced copy."""
        cart = batch.cart + random_displacements(batch.cart.shape[0], self.low, self.high,
                                                 device=batch.cart.device, dtype=batch.cart.dtype)
        edge_attr = gaussian_expansion(edge_lengths(batch, cart), self.settings).to(batch.edge_attr.dtype)
        return F.normalize(self.projection(encoder(batch, edge_attr=edge_attr, cart=cart).graph), dim=-1)

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """Two displaced copies of ``batch.cart`` ``(N, 3)`` → graph embeddings ``(B, D)`` each."""
        z1, z2 = self.view(batch, encoder), self.view(batch, encoder)
        sim = z1 @ z2.T
        if self.loss_kind == "cosine":
            loss = (1 - sim.diagonal()).mean()
        else:
            target = torch.arange(sim.shape[0], device=sim.device)
            loss = 0.5 * (F.cross_entropy(sim / self.temperature, target)
                          + F.cross_entropy(sim.T / self.temperature, target))
        with torch.no_grad():
            correct = (sim.argmax(dim=1) == torch.arange(sim.shape[0], device=sim.device)).sum().to(torch.float64)
        return PretextResult(loss, {"correct": correct, "total": torch.tensor(float(sim.shape[0]), dtype=torch.float64)})
