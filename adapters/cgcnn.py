"""CGCNN student (Xie & Grossman, Phys. Rev. Lett. 120, 145301, 2018) on torch-geometric.

Architecture (paper defaults; ``default_config`` keys in brackets):

1. atom embedding: Linear ``92 (+ extra) → width`` [``width`` = 64];
2. ``layers`` [3] crystal graph convolutions (``torch_geometric.nn.CGConv`` with batch norm), each
   followed by softplus:

   .. math::
       z_{ij} = [x_i \\,\\|\\, x_j \\,\\|\\, e_{ij}],\\quad
       x_i' = \\mathrm{softplus}\\Big(x_i + \\mathrm{BN}\\big(\\textstyle\\sum_j
       \\sigma(z_{ij} W_f + b_f) \\odot \\mathrm{softplus}(z_{ij} W_s + b_s)\\big)\\Big)

3. mean pooling over the atoms of each structure → graph embedding ``(B, width)``;
4. softplus → Linear ``width → head_width`` [128] → softplus, ``head_layers − 1`` more hidden
   layers [1 in all], then Linear ``head_width → T``.

The graph is CGCNN's: neighbours within ``cutoff`` [8 Å], the ``max_neighbors`` [12] nearest,
Gaussian edge features every ``gaussian_step`` [0.2 Å] of width ``gaussian_width`` [0.2 Å] (41).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import CGConv
from torch_geometric.utils import scatter

from crysdistill.errors import ConfigError
from crysdistill.students.base import StudentOutput

from ._common import GRAPH_DEFAULTS, CrystalGraphStudent


class CGCNNAdapter(CrystalGraphStudent):
    """CGCNN as a crysdistill student.

    The node embedding is the atom vector after the last convolution, ``(N, width)``; with the
    default width of 64 it matches the CrysGNN teacher, so the original CrysGNN recipe
    (distillation without projection) applies.
    """

    name = "cgcnn"

    @classmethod
    def default_config(cls) -> dict:
        return {"width": 64, "layers": 3, "head_width": 128, "head_layers": 1, **GRAPH_DEFAULTS}

    def build(self) -> None:
        c = self.config
        width, n_edge = int(c["width"]), self.graph_settings.n_gaussians
        if int(c["layers"]) < 1 or int(c["head_layers"]) < 1:
            raise ConfigError("cgcnn: layers and head_layers must be >= 1")
        self.embedding = nn.Linear(self.input_dim, width)
        self.convs = nn.ModuleList(
            [CGConv(width, dim=n_edge, aggr="add", batch_norm=True) for _ in range(int(c["layers"]))]
        )
        hidden = int(c["head_width"])
        self.conv_to_fc = nn.Linear(width, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(int(c["head_layers"]) - 1)])
        self.fc_out = nn.Linear(hidden, self.n_targets)

    @property
    def embedding_dim(self) -> int:
        return int(self.config["width"])

    def forward(self, batch: Batch) -> StudentOutput:
        """Predict a batch from :meth:`collate`.

        Shapes: ``batch.x`` ``(N, 92 + extra)``, ``batch.edge_attr`` ``(E, 41)`` →
        prediction ``(B, T)``, node embedding ``(N, width)``, graph embedding ``(B, width)``.
        """
        x = self.embedding(batch.x)
        for conv in self.convs:
            x = F.softplus(conv(x, batch.edge_index, batch.edge_attr))
        n_graphs = int(batch.num_graphs)
        pooled = scatter(x, batch.batch, dim=0, dim_size=n_graphs, reduce="mean")
        h = F.softplus(self.conv_to_fc(F.softplus(pooled)))
        for lin in self.hidden:
            h = F.softplus(lin(h))
        return StudentOutput(prediction=self.fc_out(h), node_embedding=x, site_index=batch.site_id,
                             node_batch=batch.batch, graph_embedding=pooled)

