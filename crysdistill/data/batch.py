"""Cached crystal-graph arrays → torch-geometric batches (teacher and CGCNN-family students)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import Arrays, GraphSettings, gaussian_expansion

#: Prefix of the batch attributes that carry record labels (``batch.label_<key>``, ``(B,)``).
LABEL_PREFIX = "label_"


def label_attribute(key: str) -> str:
    """The batch attribute of record label ``key`` (characters other than letters, digits and ``_``
    become ``_``)."""
    return LABEL_PREFIX + "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def to_data(arrays: Arrays, settings: GraphSettings) -> Data:
    """One crystal graph as a PyG ``Data``.

    Attributes of the result: ``x`` ``(N, F)`` atom features, ``z`` ``(N,)``, ``site_id`` ``(N,)``
    (index of the node's site in the structure; named so PyG does not shift it when batching),
    ``edge_index`` ``(2, E)`` (row 0 neighbour, row 1 centre), ``distance`` ``(E,)``, ``image``
    ``(E, 3)``, ``cart`` ``(N, 3)``, ``lattice`` ``(1, 3, 3)``, ``spg`` ``(1,)`` (``-1`` unknown),
    ``crystal_system`` ``(1,)``, and every ``label_<key>`` array of ``arrays`` as a float tensor
    ``(1,)`` (record labels that a pretext task reads; NaN where missing).
    """
    table, _ = atom_feature_table(settings.atom_features)
    z = torch.from_numpy(arrays["z"].astype(np.int64))
    n = z.shape[0]
    labels = {k: torch.as_tensor(v, dtype=torch.float32).reshape(1) for k, v in arrays.items()
              if k.startswith(LABEL_PREFIX)}
    return Data(
        x=torch.from_numpy(table[arrays["z"].astype(np.int64)]),
        z=z,
        site_id=torch.arange(n),
        edge_index=torch.from_numpy(arrays["edge_index"].astype(np.int64)),
        distance=torch.from_numpy(arrays["distance"].copy()),
        image=torch.from_numpy(arrays["image"].astype(np.float32)),
        cart=torch.from_numpy(arrays["cart"].copy()),
        lattice=torch.from_numpy(arrays["lattice"].copy()).unsqueeze(0),
        spg=torch.from_numpy(arrays["spg"].astype(np.int64)),
        crystal_system=torch.from_numpy(arrays["crystal_system"].astype(np.int64)),
        num_nodes=n,
        **labels,
    )


def collate(graphs: Sequence[Arrays], settings: GraphSettings) -> Batch:
    """Batch crystal graphs and add the Gaussian edge features ``edge_attr`` ``(E, n_gaussians)``."""
    batch = Batch.from_data_list([to_data(g, settings) for g in graphs])
    batch.edge_attr = gaussian_expansion(batch.distance, settings)
    return batch
