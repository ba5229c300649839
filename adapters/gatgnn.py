"""GATGNN student (Louis et al., "Graph convolutional neural networks with global attention for
improved materials property prediction", Phys. Chem. Chem. Phys. 22, 18141, 2020).

Architecture (paper defaults; ``default_config`` keys in brackets):

1. atom embedding Linear ``92 (+ extra) → width`` [64]; edge embedding
   ``LeakyReLU_0.2(Linear(41 → width))``;
2. ``layers`` [3] augmented graph-attention layers
   (:class:`~crysdistill_adapters._common.AugmentedGraphAttention`, ``heads`` [4] heads averaged,
   edge features in messages and attention), each followed by batch norm and softplus;
3. composition-weighted global attention pooling
   (:class:`~crysdistill_adapters._common.CompositionAttentionPooling`): per-atom scores from the
   atom embedding and the element fractions of its structure, softmax within each structure,
   weighted sum → graph embedding ``(B, width)``;
4. MLP head: ``head_layers`` [1] × (Linear → softplus) of width ``head_width`` [64], Linear → ``T``.

Same graph as CGCNN (8 Å, 12 neighbours, 41 Gaussians). The paper trained with AdamW, lr 5e-3,
batch 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

from crysdistill.errors import ConfigError
from crysdistill.students.base import StudentOutput

from ._common import (
    GRAPH_DEFAULTS,
    AugmentedGraphAttention,
    CompositionAttentionPooling,
    CrystalGraphStudent,
    mlp_head,
)


class GATGNNAdapter(CrystalGraphStudent):
    """GATGNN as a crysdistill student.

    The node embedding is the atom vector after the last attention layer (after its batch norm
    and softplus), ``(N, width)``; the graph embedding is the attention-pooled vector.
    """

    name = "gatgnn"

    @classmethod
    def default_config(cls) -> dict:
        return {"width": 64, "layers": 3, "heads": 4, "head_width": 64, "head_layers": 1, **GRAPH_DEFAULTS}

    def build(self) -> None:
        c = self.config
        width, layers, heads = int(c["width"]), int(c["layers"]), int(c["heads"])
        if layers < 1 or heads < 1 or int(c["head_layers"]) < 0:
            raise ConfigError(f"{self.name}: layers and heads must be >= 1, head_layers >= 0")
        self.node_embedding = nn.Linear(self.input_dim, width)
        self.edge_embedding = nn.Linear(self.graph_settings.n_gaussians, width)
        self.convs = nn.ModuleList([AugmentedGraphAttention(width, width, heads) for _ in range(layers)])
        self.norms = nn.ModuleList([self._norm(width) for _ in range(layers)])
        self.pool = CompositionAttentionPooling(width)
        self.head = mlp_head(width, int(c["head_width"]), int(c["head_layers"]), self.n_targets)

    def _norm(self, width: int) -> nn.Module:
        """Normalisation after each attention layer (batch norm in GATGNN)."""
        return nn.BatchNorm1d(width)

    def _update(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """New atom vectors from the old ``x`` and the normalised layer output ``h`` (GATGNN: softplus(h))."""
        return F.softplus(h)

    @property
    def embedding_dim(self) -> int:
        return int(self.config["width"])

    def encode(self, batch: Batch) -> torch.Tensor:
        """Atom embeddings after the last attention layer: ``(N, width)``."""
        x = self.node_embedding(batch.x)
        e = F.leaky_relu(self.edge_embedding(batch.edge_attr), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            x = self._update(x, norm(conv(x, batch.edge_index, e)))
        return x

    def attention(self, batch: Batch) -> torch.Tensor:
        """Global attention weight of every atom, ``(N,)``; they sum to 1 within each structure."""
        return self.pool(self.encode(batch), batch.z, batch.batch, int(batch.num_graphs))[1]

    def forward(self, batch: Batch) -> StudentOutput:
        """Predict a batch from :meth:`collate`: prediction ``(B, T)``, embeddings ``(N, width)``, ``(B, width)``."""
        x = self.encode(batch)
        pooled, _ = self.pool(x, batch.z, batch.batch, int(batch.num_graphs))
        return StudentOutput(prediction=self.head(pooled), node_embedding=x, site_index=batch.site_id,
                             node_batch=batch.batch, graph_embedding=pooled)
