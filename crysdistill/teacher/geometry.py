"""Edge geometry of a collated batch: edge vectors and lengths from (displaced) atom positions,
and the bond-orientational order of each atom's neighbourhood.

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


def edge_vectors(batch, cart: torch.Tensor | None = None) -> torch.Tensor:
    """``(E, 3)`` vectors from centre ``i`` to neighbour ``j`` in Å, from ``cart`` ``(N, 3)``
    (default ``batch.cart``).

    Needs ``batch.image`` ``(E, 3)`` and ``batch.lattice`` ``(B, 3, 3)`` (lattice vectors as rows).
    """
    cart = batch.cart if cart is None else cart
    j, i = batch.edge_index
    lattice = batch.lattice.view(-1, 3, 3).to(cart.dtype)[edge_graph(batch)]
    shift = torch.bmm(batch.image.to(cart.dtype).unsqueeze(1), lattice).squeeze(1)
    return cart[j] + shift - cart[i]


def edge_lengths(batch, cart: torch.Tensor | None = None) -> torch.Tensor:
    """``(E,)`` edge lengths in Å from ``cart`` ``(N, 3)`` (default ``batch.cart``)."""
    return edge_vectors(batch, cart).norm(dim=-1)


#: Softness of the neighbour weights of :func:`bond_orientation`, as fractions of each atom's
#: nearest-neighbour distance: a first-shell and a wider view.
ORIENTATION_SCALES = (0.05, 0.15)


def legendre(x: torch.Tensor, orders: int) -> torch.Tensor:
    """``(..., orders)`` Legendre polynomials ``P_1(x) … P_orders(x)`` (Bonnet's recursion)."""
    p_prev, p = torch.ones_like(x), x
    out = [p]
    for n in range(1, orders):
        p_prev, p = p, ((2 * n + 1) * x * p - n * p_prev) / (n + 1)
        out.append(p)
    return torch.stack(out, dim=-1)


def bond_orientation(batch, orders: int, cart: torch.Tensor | None = None,
                     scales: tuple[float, ...] = ORIENTATION_SCALES,
                     hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Steinhardt bond-orientational order parameters of every atom's neighbours in the graph.

    For atom ``i`` with neighbour unit vectors ``u_j`` and weights ``w_j`` (summing to 1),
    ``q_l(i)² = Σ_j Σ_k w_j w_k P_l(u_j · u_k)``, the rotation-invariant power of the degree-``l``
    spherical harmonics of the neighbour directions (Steinhardt, Nelson & Ronchetti 1983, with the
    addition theorem). The weights ``w_j ∝ exp(-(d_j - d_min) / (s · d_min))`` favour the nearest
    shell: the graph keeps at most ``max_neighbors`` neighbours, so a shell the cut splits (and
    whose kept members depend on the cell setting) weighs little at the small scale ``s``.

    Distances alone cannot tell a cubic from a tetragonal neighbourhood at equal bond lengths;
    these angles can. Cost: one ``(N, K, K)`` cosine matrix, ``K`` the most neighbours of any atom.

    Args:
        batch: collated batch (``edge_index``, ``image``, ``lattice``, ``cart``, ``batch``).
        orders: ``l = 1 … orders``.
        cart: optional displaced positions ``(N, 3)``.
        scales: weight softness values ``s``.
        hidden: optional ``(E,)`` bool, edges left out (bonds whose length a pretext task hides:
            their direction and length must not reach the atoms through these values).

    Returns:
        ``(N, orders · len(scales))`` values in ``[0, 1]``: ``q_1 … q_orders`` per scale.
    """
    vec = edge_vectors(batch, cart)
    centre = batch.edge_index[1]
    if hidden is not None:
        vec, centre = vec[~hidden], centre[~hidden]
    n = int(batch.num_nodes)
    dist = vec.norm(dim=-1).clamp_min(1e-8)
    unit = vec / dist.unsqueeze(-1)
    # pad each atom's neighbours into a row: (N, K)
    order = torch.argsort(centre, stable=True)
    counts = torch.bincount(centre, minlength=n)
    k = int(counts.max()) if len(centre) else 1
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(centre), device=centre.device) - starts[centre[order]]
    mask = torch.zeros(n, k, dtype=torch.bool, device=centre.device)
    mask[centre[order], slot] = True
    u = unit.new_zeros(n, k, 3)
    u[centre[order], slot] = unit[order]
    d = dist.new_full((n, k), float("inf"))
    d[centre[order], slot] = dist[order]
    d_min = d.min(dim=1, keepdim=True).values.clamp_max(1e8)
    p = legendre((u @ u.transpose(1, 2)).clamp(-1.0, 1.0), orders)  # (N, K, K, L)
    out = []
    for s in scales:
        w = torch.softmax(torch.where(mask, -(d - d_min) / (s * d_min), float("-inf")), dim=1)
        w = torch.nan_to_num(w)  # an atom without neighbours (never in a valid graph) gets zeros
        q2 = torch.einsum("nj,nk,njkl->nl", w, w, p)
        out.append(q2.clamp_min(0.0).add(1e-12).sqrt())
    return torch.cat(out, dim=-1)


def random_displacements(n: int, low: float, high: float, *, device=None, dtype=torch.float32,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 3)`` vectors in uniformly random directions with lengths uniform in ``[low, high]`` Å."""
    direction = torch.nn.functional.normalize(torch.randn(n, 3, device=device, dtype=dtype, generator=generator), dim=-1)
    length = low + (high - low) * torch.rand(n, 1, device=device, dtype=dtype, generator=generator)
    return direction * length
