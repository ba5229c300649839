"""Connectivity reconstruction: how many times is atom ``j`` among atom ``i``'s neighbours?

CrysGNN scores every ordered atom pair of each cell with a bilinear form, an ``O(N²)`` loop per
crystal. Here the pairs are sampled, fully vectorised over the batch:

* **positives**: the unique ordered pairs ``(i, j)`` of the neighbour list; the class is the
  number of edges ``j → i`` (periodic images count separately), clipped to ``max_count``;
* **negatives** (class 0): for each of ``negatives_per_positive × n_pos`` draws, a centre ``i``
  taken from a random positive pair and a partner ``j`` drawn uniformly from the atoms of the
  same crystal (via ``batch.ptr``); draws that hit a neighbour pair are rejected with a
  ``torch.isin`` test on pair keys ``i · N + j``. Crystals whose atoms are all neighbours of one
  another have no negatives to draw.

The class-0 weight of the cross-entropy is an option (``negative_weight``, default 1.0): with one
sampled negative per positive pair the classes are already balanced, which is what CrysGNN's
0.1 weight on the far more numerous all-pairs negatives approximated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput
from crysdistill.teacher.pretext.base import PretextResult, PretextTask


def neighbour_pairs(edge_index: torch.Tensor, n_nodes: int, max_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique ordered neighbour pairs and their multiplicity class.

    Args:
        edge_index: ``(2, E)`` with row 0 the neighbour ``j`` and row 1 the centre ``i``.
        n_nodes: number of atoms ``N`` in the batch.
        max_count: classes are clipped to this.

    Returns:
        ``(pairs, label)``: ``(2, P)`` rows ``(i, j)``, sorted by ``i · N + j``, and ``(P,)`` long
        ``min(count, max_count)``.
    """
    j, i = edge_index
    keys, counts = torch.unique(i * n_nodes + j, return_counts=True)
    return torch.stack([keys // n_nodes, keys % n_nodes]), counts.clamp(max=max_count)


def sample_negative_pairs(pairs: torch.Tensor, ptr: torch.Tensor, node_graph: torch.Tensor, n_nodes: int,
                          n_samples: int, attempts: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-neighbour ordered pairs within the same crystal, drawn at random.

    Args:
        pairs: ``(2, P)`` neighbour pairs ``(i, j)`` (all of them: any draw among them is rejected).
        ptr: ``(B + 1,)`` first atom of each crystal (``batch.ptr``).
        node_graph: ``(N,)`` crystal of each atom (``batch.batch``).
        n_nodes: ``N``.
        n_samples: how many negatives to return at most.
        attempts: candidates drawn per wanted negative before rejection.
        generator: random generator (default: torch's global one).

    Returns:
        ``(2, M)`` pairs ``(i, j)`` with ``M ≤ n_samples``; none is a neighbour pair.
    """
    device = pairs.device
    if n_samples <= 0 or pairs.shape[1] == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    n_draw = n_samples * attempts
    pick = torch.randint(pairs.shape[1], (n_draw,), device=device, generator=generator)
    i = pairs[0, pick]
    g = node_graph[i]
    start, size = ptr[g], ptr[g + 1] - ptr[g]
    j = start + (torch.rand(n_draw, device=device, generator=generator) * size).long().clamp(max=size - 1)
    ok = ~torch.isin(i * n_nodes + j, pairs[0] * n_nodes + pairs[1])
    i, j = i[ok][:n_samples], j[ok][:n_samples]
    return torch.stack([i, j])


class PairBilinear(nn.Module):
    """``y_k = h_i^T W_k h_j + b_k``: the maths and parameters of ``nn.Bilinear``, computed with
    one matrix product and a reduction (``nn.Bilinear``'s backward is ~10× slower on CPU).

    Args:
        width: ``D`` of both inputs.
        classes: ``K`` outputs.

    Shapes:
        left ``(P, D)``, right ``(P, D)`` → ``(P, K)``.
    """

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, width, width))
        self.bias = nn.Parameter(torch.empty(classes))
        bound = 1 / width**0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        k, d, _ = self.weight.shape
        proj = (left @ self.weight.permute(1, 0, 2).reshape(d, k * d)).view(-1, k, d)
        return (proj * right.unsqueeze(1)).sum(dim=-1) + self.bias


class ConnectivityReconstruction(PretextTask):
    """Bilinear ``(D, D → max_count + 1)`` classifier of atom pairs, weighted cross-entropy.

    Args:
        negatives_per_positive: sampled non-neighbour pairs per unique neighbour pair.
        negative_weight: cross-entropy weight of class 0 (the other classes weigh 1).
        max_count: largest class (multiplicities above are clipped); 5 in CrysGNN.

    Counts: ``correct`` / ``total`` over the scored pairs (positives and sampled negatives) and
    ``class0`` … ``class{max_count}``, the pairs of each class (for a majority-class baseline).
    """

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25, *,
                 negatives_per_positive: float = 1.0, negative_weight: float = 1.0, max_count: int = 5) -> None:
        super().__init__(width, settings, weight)
        if negatives_per_positive < 0 or negative_weight < 0 or max_count < 1:
            raise ValueError("negatives_per_positive and negative_weight must be >= 0 and max_count >= 1")
        self.negatives_per_positive = float(negatives_per_positive)
        self.max_count = int(max_count)
        self.head = PairBilinear(width, max_count + 1)
        class_weight = torch.ones(max_count + 1)
        class_weight[0] = negative_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def pairs_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scored pairs ``(2, P + M)`` and their classes ``(P + M,)`` for a batch."""
        n = int(batch.num_nodes)
        pos, label = neighbour_pairs(batch.edge_index, n, self.max_count)
        node_graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
            n, dtype=torch.long, device=pos.device)
        ptr = batch.ptr if getattr(batch, "ptr", None) is not None else torch.tensor([0, n], device=pos.device)
        neg = sample_negative_pairs(pos, ptr, node_graph, n, int(round(self.negatives_per_positive * pos.shape[1])))
        pairs = torch.cat([pos, neg], dim=1)
        labels = torch.cat([label, torch.zeros(neg.shape[1], dtype=torch.long, device=pos.device)])
        return pairs, labels

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """Scores ``bilinear(h_i, h_j)`` of ``out.node`` ``(N, D)`` for the sampled pairs."""
        pairs, labels = self.pairs_and_labels(batch)
        logits = self.head(out.node[pairs[0]], out.node[pairs[1]])
        loss = F.cross_entropy(logits, labels, weight=self.class_weight.to(logits.dtype))
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == labels).sum().to(torch.float64)
            per_class = torch.bincount(labels, minlength=self.max_count + 1).to(torch.float64)
        counts = {"correct": correct, "total": per_class.sum()}
        counts.update({f"class{k}": c for k, c in enumerate(per_class)})
        return PretextResult(loss, counts)
