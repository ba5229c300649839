"""Edge geometry of a collated batch: recompute edge lengths from (displaced) atom positions.

The cached graph stores, for every edge ``j → i`` (row 0 of ``edge_index`` the neighbour ``j``,
row 1 the centre ``i``), the lattice offset ``image`` of ``j``. The edge vector is
``cart[j] + image · lattice − cart[i]``, so tasks that move atoms keep the neighbour list and
recompute only the lengths.
"""

from __future__ import annotations

import torch


def edge_graph(batch) -> torch.Tensor:
    """``(E,)`` crystal of each edge (the crystal of its centre atom)."""
    n = int(batch.num_nodes)
    node_graph = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(
        n, dtype=torch.long, device=batch.edge_index.device)
    return node_graph[batch.edge_index[1]]


def edge_lengths(batch, cart: torch.Tensor | None = None) -> torch.Tensor:
    """``(E,)`` edge lengths in Å from ``cart`` ``(N, 3)`` (default ``batch.cart``).

    Needs ``batch.image`` ``(E, 3)`` and ``batch.lattice`` ``(B, 3, 3)`` (lattice vectors as rows).
    """
    cart = batch.cart if cart is None else cart
    j, i = batch.edge_index
    lattice = batch.lattice.view(-1, 3, 3).to(cart.dtype)[edge_graph(batch)]
    shift = torch.bmm(batch.image.to(cart.dtype).unsqueeze(1), lattice).squeeze(1)
    return (cart[j] + shift - cart[i]).norm(dim=-1)


def random_displacements(n: int, low: float, high: float, *, device=None, dtype=torch.float32,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 3)`` vectors in uniformly random directions with lengths uniform in ``[low, high]`` Å."""
    direction = torch.nn.functional.normalize(torch.randn(n, 3, device=device, dtype=dtype, generator=generator), dim=-1)
    length = low + (high - low) * torch.rand(n, 1, device=device, dtype=dtype, generator=generator)
    return direction * length
