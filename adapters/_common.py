"""Parts shared by the CGCNN-family students (CGCNN, GATGNN, DeeperGATGNN).

All three read the same crystal graph as the CrysGNN teacher (8 Å, 12 nearest neighbours,
periodic images kept, 41 Gaussian edge features, 92-bit CGCNN atom vectors), built by
:class:`crysdistill.data.graph.CrystalGraphFeaturizer` and batched by
:func:`crysdistill.data.batch.collate`. This module holds

* :class:`CrystalGraphStudent`: the featuriser, collate (with optional extra atom features) and the
  graph keys of the config, shared by the three adapters;
* :class:`AugmentedGraphAttention`: the edge-aware graph-attention layer of GATGNN (also the
  convolution of DeeperGATGNN);
* :class:`CompositionAttentionPooling`: GATGNN's composition-weighted global attention pooling;
* :func:`mlp_head`: the fully connected layers after pooling.

Only crysdistill's public contract is imported, as a third-party adapter would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter, softmax

from crysdistill.data.batch import collate as collate_crystal_graphs
from crysdistill.data.features import MAX_Z
from crysdistill.data.graph import Arrays, CrystalGraphFeaturizer, GraphSettings
from crysdistill.students.base import StudentAdapter

#: Graph keys every CGCNN-family config carries (CGCNN / CrysGNN defaults).
GRAPH_DEFAULTS: dict[str, Any] = {"cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2, "gaussian_width": 0.2}


def add_extra_atom_features(x: torch.Tensor, counts: Sequence[int],
                            extra_atom_features: Sequence[torch.Tensor] | None, width: int) -> torch.Tensor:
    """Concatenate per-site extra features to the atom features of a batch.

    Args:
        x: ``(N, F)`` atom features of the batch, structure after structure.
        counts: number of atom nodes (= sites) of each structure.
        extra_atom_features: one ``(n_sites, width)`` tensor per structure, or ``None``.
        width: extra width the adapter was built with (``0`` = none expected).

    Returns:
        ``(N, F + width)``.

    Raises:
        ValueError: missing, unexpected or mis-shaped extra features.
    """
    if not width:
        if extra_atom_features is not None:
            raise ValueError("extra atom features given to a student built with extra_atom_features=0")
        return x
    if extra_atom_features is None or len(extra_atom_features) != len(counts):
        raise ValueError(f"expected one (n_sites, {width}) extra feature tensor per structure")
    for k, (e, n) in enumerate(zip(extra_atom_features, counts)):
        if tuple(e.shape) != (n, width):
            raise ValueError(f"extra atom features of structure {k}: shape {tuple(e.shape)}, expected ({n}, {width})")
    return torch.cat([x, torch.cat([e.to(x.dtype) for e in extra_atom_features])], dim=-1)


class CrystalGraphStudent(StudentAdapter):
    """Base of students on the CGCNN/CrysGNN crystal graph.

    Provides the featuriser (from the config keys in :data:`GRAPH_DEFAULTS`, without symmetry
    labels), :meth:`collate` to a PyG ``Batch`` (``x`` ``(N, 92 + extra)``, ``edge_index``,
    ``edge_attr`` ``(E, n_gaussians)``, ``z``, ``site_id``, ``batch``) and extra atom features
    concatenated to ``x`` before the atom embedding.
    """

    accepts_extra_atom_features = True

    @property
    def graph_settings(self) -> GraphSettings:
        """The graph this student reads (from its config)."""
        c = self.config
        return GraphSettings(cutoff=float(c["cutoff"]), max_neighbors=int(c["max_neighbors"]),
                             gaussian_step=float(c["gaussian_step"]), gaussian_width=float(c["gaussian_width"]),
                             symmetry=False)

    @property
    def input_dim(self) -> int:
        """Width of ``batch.x``: atom features plus extra atom features."""
        return self.graph_settings.atom_feature_dim + self.extra_atom_features

    def featurizer(self) -> CrystalGraphFeaturizer:
        return CrystalGraphFeaturizer(self.graph_settings)

    def collate(self, graphs: Sequence[Arrays], extra_atom_features: Sequence[torch.Tensor] | None = None) -> Batch:
        batch = collate_crystal_graphs(graphs, self.graph_settings)
        counts = [int(g["z"].shape[0]) for g in graphs]
        batch.x = add_extra_atom_features(batch.x, counts, extra_atom_features, self.extra_atom_features)
        return batch


class AugmentedGraphAttention(nn.Module):
    """Augmented graph attention (AGAT), the convolution of GATGNN (Louis et al., PCCP 22, 18141, 2020).

    Edge features enter both the messages and the attention. For an edge ``j → i`` and head ``k``:

    .. math::
        h^k_{i} = \\mathrm{softplus}([x_i \\,\\|\\, e_{ij}] W^k),\\quad
        h^k_{j} = \\mathrm{softplus}([x_j \\,\\|\\, e_{ij}] W^k)

        s^k_{ij} = \\mathrm{softplus}\\big(\\mathrm{BN}(a^k \\cdot [h^k_i \\,\\|\\, h^k_j])\\big),\\quad
        \\alpha^k_{ij} = \\operatorname{softmax}_{j \\in \\mathcal{N}(i)} s^k_{ij}

        x'_i = \\frac{1}{K} \\sum_k \\sum_{j \\in \\mathcal{N}(i)} \\alpha^k_{ij} h^k_j + b

    (heads averaged, so the output width equals ``width``). ``BN`` is a batch normalisation of the
    ``K`` attention logits over the edges of the batch.

    Args:
        width: node and output width ``D``.
        edge_dim: edge feature width ``G``.
        heads: attention heads ``K``.

    Shapes:
        x ``(N, D)``, edge_index ``(2, E)`` (row 0 neighbour ``j``, row 1 centre ``i``),
        edge_attr ``(E, G)`` → ``(N, D)``.
    """

    def __init__(self, width: int, edge_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.width, self.heads = width, heads
        # W^k split into its node and edge blocks: [x ‖ e] W = x W_x + e W_e (one matmul per node,
        # one per edge, instead of two per edge)
        self.lin_node = nn.Linear(width, heads * width, bias=False)
        self.lin_edge = nn.Linear(edge_dim, heads * width, bias=False)
        self.att = nn.Parameter(torch.empty(1, heads, 2 * width))
        self.bn = nn.BatchNorm1d(heads)
        self.bias = nn.Parameter(torch.zeros(width))
        nn.init.xavier_uniform_(self.att)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        j, i = edge_index
        n, k, d = x.shape[0], self.heads, self.width
        xw = self.lin_node(x).view(n, k, d)
        ew = self.lin_edge(edge_attr).view(-1, k, d)
        h_i = F.softplus(xw[i] + ew)  # (E, K, D)
        h_j = F.softplus(xw[j] + ew)
        logits = (h_i * self.att[..., :d]).sum(-1) + (h_j * self.att[..., d:]).sum(-1)  # (E, K)
        alpha = softmax(F.softplus(self.bn(logits)), i, num_nodes=n)  # (E, K), sums to 1 per centre
        msg = (h_j * alpha.unsqueeze(-1)).mean(dim=1)  # heads averaged before the (linear) sum
        return scatter(msg, i, dim=0, dim_size=n, reduce="sum") + self.bias


def composition_vector(z: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Element fractions of each structure: ``(B, MAX_Z + 1)``, row ``b`` sums to 1.

    Args:
        z: ``(N,)`` atomic numbers.
        batch: ``(N,)`` structure of each atom.
        n_graphs: ``B``.
    """
    onehot = F.one_hot(z.long(), MAX_Z + 1).to(torch.get_default_dtype())
    return scatter(onehot, batch, dim=0, dim_size=n_graphs, reduce="mean")


class CompositionAttentionPooling(nn.Module):
    """Composition-weighted global attention pooling of GATGNN (Louis et al. 2020).

    Each atom gets a score from its embedding and the composition (element fractions ``c_b``) of
    its structure; scores are normalised by a softmax within each structure and weight the sum:

    .. math::
        a_i = w_2^\\top \\mathrm{softplus}(W_1 [x_i \\,\\|\\, c_{b(i)}] + b_1) + b_2,\\quad
        \\alpha_i = \\operatorname{softmax}_{i \\in b} a_i,\\quad
        g_b = \\sum_{i \\in b} \\alpha_i x_i

    Args:
        width: atom embedding width ``D``.
        hidden: width of the scoring layer.

    Shapes:
        x ``(N, D)``, z ``(N,)``, batch ``(N,)`` → pooled ``(B, D)`` and weights ``(N,)``.
    """

    def __init__(self, width: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.score = nn.Sequential(nn.Linear(width + MAX_Z + 1, hidden), nn.Softplus(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor, batch: torch.Tensor,
                n_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        comp = composition_vector(z, batch, n_graphs)
        a = self.score(torch.cat([x, comp[batch].to(x.dtype)], dim=-1)).squeeze(-1)  # (N,)
        alpha = softmax(a, batch, num_nodes=n_graphs)
        return scatter(x * alpha.unsqueeze(-1), batch, dim=0, dim_size=n_graphs, reduce="sum"), alpha


def mlp_head(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """``layers`` × (Linear → softplus) of width ``hidden``, then Linear to ``out_dim``.

    ``layers = 0`` gives a single linear output layer.
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(int(layers)):
        mods += [nn.Linear(d, hidden), nn.Softplus()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)

