"""The CrysGNN teacher encoder: CGCNN convolutions with L2-normalised atom embeddings.

Architecture (Das et al., AAAI 2023, following Xie & Grossman 2018): a bias-free linear embedding
of the 92-bit atom vector to ``width``, then ``layers`` CGCNN convolutions

.. math::
    z_{ij} = [x_i, x_j, e_{ij}] W + b,\\quad
    (f_{ij}, c_{ij}) = \\mathrm{split}(\\mathrm{BN}(z_{ij})),\\quad
    x_i' = \\mathrm{softplus}\\big(x_i + \\mathrm{BN}(\\textstyle\\sum_j \\sigma(f_{ij}) \\odot
    \\mathrm{softplus}(c_{ij}))\\big)

Node embeddings are L2-normalised per atom; the graph embedding is their mean.

With ``angular_orders = L > 0`` (off by default, as in CrysGNN), each atom's input vector also
carries the Steinhardt bond-orientational order ``q_1 … q_L`` of its neighbours at two distance
weightings (:func:`crysdistill.teacher.geometry.bond_orientation`): the angles between bonds,
which a graph of distances alone does not see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from crysdistill.teacher.geometry import ORIENTATION_SCALES, bond_orientation


@dataclass
class EncoderConfig:
    """Constructor arguments of :class:`CrysGNNEncoder` (saved in the teacher checkpoint)."""

    atom_features: int = 92
    edge_features: int = 41
    width: int = 64
    layers: int = 5
    angular_orders: int = 0

    def __post_init__(self) -> None:
        a = self.angular_orders
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ValueError(f"encoder.angular_orders must be a non-negative integer (0 = off), got {a!r}")

    @property
    def input_features(self) -> int:
        """Width of each atom's input vector: atom features plus the bond-orientation values."""
        return self.atom_features + self.angular_orders * len(ORIENTATION_SCALES)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EncoderOutput:
    """What the encoder returns for a batch of ``B`` graphs with ``N`` atoms.

    Attributes:
        node: ``(N, width)`` L2-normalised atom embeddings after the last convolution.
        graph: ``(B, width)`` mean of ``node`` per graph.
        layers: ``layers + 1`` tensors ``(N, width)``: the input embedding (layer 0) and the
            output of every convolution, not normalised (the multi-scale embeddings of NEGNN).
        batch: ``(N,)`` graph index of each atom.
    """

    node: torch.Tensor
    graph: torch.Tensor
    layers: list[torch.Tensor] = field(default_factory=list)
    batch: torch.Tensor | None = None


class CGCNNConv(nn.Module):
    """One CGCNN convolution with the gated, batch-normalised message of Xie & Grossman.

    Args:
        width: node feature width ``D``.
        edge_features: edge feature width ``G``.

    Shapes:
        x ``(N, D)``, edge_index ``(2, E)`` (row 0 neighbour ``j``, row 1 centre ``i``),
        edge_attr ``(E, G)`` → ``(N, D)``.
    """

    def __init__(self, width: int, edge_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * width + edge_features, 2 * width)
        self.bn1 = nn.BatchNorm1d(2 * width)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        j, i = edge_index
        z = self.bn1(self.fc(torch.cat([x[i], x[j], edge_attr], dim=-1)))
        filt, core = z.chunk(2, dim=-1)
        msg = torch.sigmoid(filt) * F.softplus(core)
        agg = scatter(msg, i, dim=0, dim_size=x.shape[0], reduce="sum")
        return F.softplus(x + self.bn2(agg))


class CrysGNNEncoder(nn.Module):
    """CrysGNN encoder (5 × 64 by default).

    Args:
        config: sizes; see :class:`EncoderConfig`.
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        self.embedding = nn.Linear(c.input_features, c.width, bias=False)
        self.convs = nn.ModuleList([CGCNNConv(c.width, c.edge_features) for _ in range(c.layers)])

    @property
    def width(self) -> int:
        return self.config.width

    def forward(self, batch, x: torch.Tensor | None = None, edge_attr: torch.Tensor | None = None,
                cart: torch.Tensor | None = None, hidden_edges: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a PyG batch from :func:`crysdistill.data.batch.collate`.

        Args:
            batch: needs ``x`` ``(N, F)``, ``edge_index``, ``edge_attr`` ``(E, G)`` and ``batch``
                (and ``cart``, ``image``, ``lattice`` when ``angular_orders > 0``).
            x: optional replacement atom features (e.g. with masked atoms).
            edge_attr: optional replacement edge features (e.g. from perturbed positions).
            cart: optional displaced positions ``(N, 3)`` for the bond orientations (pass them
                with the ``edge_attr`` computed from them).
            hidden_edges: optional ``(E,)`` bool, edges whose geometry the bond orientations leave
                out (bonds whose features a pretext task has masked).
        """
        x = batch.x if x is None else x
        edge_attr = batch.edge_attr if edge_attr is None else edge_attr
        if self.config.angular_orders:
            x = torch.cat([x, bond_orientation(batch, self.config.angular_orders, cart, hidden=hidden_edges).to(x.dtype)], dim=-1)
        h = self.embedding(x)
        layers = [h]
        for conv in self.convs:
            h = conv(h, batch.edge_index, edge_attr)
            layers.append(h)
        node = F.normalize(h, dim=-1)
        index = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
            node.shape[0], dtype=torch.long, device=node.device)
        n_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        graph = scatter(node, index, dim=0, dim_size=n_graphs, reduce="mean")
        return EncoderOutput(node=node, graph=graph, layers=layers, batch=index)
