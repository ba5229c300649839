"""Regression of a labelled property of the corpus from the graph embedding (supervised pretraining).

The other pretext tasks need no labels. This one is for a corpus that carries a label the user
trusts at scale (e.g. DFT formation energies of a large database) when the target of the student
is a different or smaller labelled set: the teacher's embeddings then carry what that property
depends on, which the self-supervised tasks do not (docs/BENCHMARKS.md, "A teacher that knows
the property").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.batch import label_attribute
from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


class PropertyRegression(PretextTask):
    """``D → 1`` on the graph embedding, Huber loss against the record label ``label``.

    Structures without the label are left out of the loss and counted in ``unknown``. Counts:
    ``abs_error`` (sum of absolute errors, in the label's unit), ``total`` (labelled structures).

    Args:
        label: the record label to predict (a key of the corpus records, e.g.
            ``formation_energy_per_atom``); required.
        scale: the label's typical magnitude; the loss compares ``prediction / scale`` with
            ``label / scale`` (Huber, δ = 1), so choose about the label's standard deviation.
        shift: subtracted from the label before scaling (about its mean).
        hidden: width of the hidden layer (``0``: a linear head).
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 label: str = "", scale: float = 1.0, shift: float = 0.0, hidden: int = 128) -> None:
        super().__init__(width, settings, weight)
        if not isinstance(label, str) or not label:
            raise ValueError("set options.label to the record label to predict (e.g. formation_energy_per_atom)")
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a number > 0, got {scale!r}")
        if not isinstance(shift, (int, float)):
            raise ValueError(f"shift must be a number, got {shift!r}")
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be a whole number >= 0 (0: a linear head), got {hidden!r}")
        self.label = label
        self.scale = float(scale)
        self.shift = float(shift)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1)) if hidden \
            else nn.Linear(width, 1)

    @property
    def label_keys(self) -> tuple[str, ...]:
        return (self.label,)

    def predict(self, out: EncoderOutput) -> torch.Tensor:
        """The predicted label ``(B,)`` in its own unit."""
        return self.head(out.graph).view(-1) * self.scale + self.shift

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """``out.graph`` ``(B, D)`` → ``(B,)`` against ``batch.label_<label>`` ``(B,)``."""
        y = getattr(batch, label_attribute(self.label)).view(-1)
        known = ~torch.isnan(y)
        z = self.head(out.graph).view(-1)
        target = torch.where(known, (y - self.shift) / self.scale, torch.zeros_like(y))
        per_graph = F.huber_loss(z, target, reduction="none", delta=1.0)
        n = known.sum()
        # an all-unlabelled batch still touches the head (zero loss) so data-parallel gradients line up
        loss = (per_graph * known).sum() / n.clamp(min=1)
        with torch.no_grad():
            err = ((z - target).abs() * self.scale * known).sum()
            counts = {"abs_error": err.to(torch.float64), "total": n.to(torch.float64),
                      "unknown": (~known).sum().to(torch.float64)}
        return PretextResult(loss, counts)
