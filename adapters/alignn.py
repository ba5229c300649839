"""ALIGNN student (Choudhary & DeCost, npj Comput. Mater. 7, 185, 2021) from the ``alignn`` package.

The model is the package's own pure-torch ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure``
(no DGL, not forked): an atom graph and its line graph, whose nodes are the bonds and whose edges
are bond pairs sharing an atom (angle triplets). Each ALIGNN layer runs an edge-gated graph
convolution on the line graph (updating bond and angle features) and one on the atom graph; GCN
layers then run on the atom graph alone:

.. math::
    \\hat e_{ij} = A x_i + B x_j + C e_{ij},\\quad
    x_i' = x_i + \\mathrm{SiLU}\\Big(\\mathrm{LN}\\Big(U x_i + \\frac{\\sum_j \\sigma(\\hat e_{ij})
    \\odot V x_j}{\\sum_j \\sigma(\\hat e_{ij}) + \\epsilon}\\Big)\\Big),\\quad
    e_{ij}' = e_{ij} + \\mathrm{SiLU}(\\mathrm{LN}(\\hat e_{ij}))

followed by mean pooling and a linear output layer.

Graph (``alignn.torch_graph_builder.build_pure_torch_graph`` on the ``jarvis.core.atoms.Atoms``
from ``pmg_to_atoms``, which keeps site order): directed edges ``src → dst`` to neighbours within
``cutoff`` [8 Å], keeping the ``max_neighbors`` [12] nearest of each ``src`` (periodic images count
separately, as in ALIGNN's and CGCNN's graphs); bond pairs ``(u→v, v→w)`` form angle triplets when
both bonds are at most ``three_body_cutoff`` long [8 Å: every bond, as in the ALIGNN paper; the
package's force-field models use 3.5 Å]. Bond lengths are expanded in ``edge_input_features`` [80]
RBFs on 0–8 Å, angle cosines in ``triplet_input_features`` [40] on −1…1. Messages flow along
``src → dst``, so an atom hears from the atoms that count it among their 12 nearest.

This is the pure-torch builder's convention, which differs from the DGL-era builder the paper used
(``alignn.graphs.nearest_neighbor_edges``): that one enlarged the cutoff until every atom had 12
neighbours and kept the whole shell of the 12th neighbour (ties included). Here the cutoff is
strict, at most 12 bonds leave each atom (ties at the 12th broken by sort order), and an atom
without any neighbour within the cutoff is a :class:`~crysdistill.errors.RecordError`.

Sizes: the default config is the CPU size, 2 ALIGNN + 2 GCN layers of width 64 (about 2 s per
training step of 64 structures on 2 CPU cores); the paper used 4 + 4 layers of width 256
(``configs/alignn-paper.yaml``), lr 1e-3, batch 64, OneCycle.

Atom embeddings are taken from the output of the last atom-graph layer with a forward hook placed
only for the duration of :meth:`ALIGNNAdapter.forward`; line-graph (bond) nodes never appear in
:class:`~crysdistill.students.base.StudentOutput`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from pymatgen.core import Structure
from torch import nn

from crysdistill.data.features import atom_feature_fingerprint, atom_feature_table
from crysdistill.data.graph import Arrays, Featurizer, check_elements
from crysdistill.errors import ConfigError, RecordError
from crysdistill.students.base import StudentAdapter, StudentOutput

from ._common import add_extra_atom_features

ATOM_FEATURES = "cgcnn"


class ALIGNNGraphFeaturizer(Featurizer):
    """ALIGNN's atom graph and line graph as numpy arrays (``N`` atoms, ``E`` bonds, ``T`` triplets).

    Output arrays:

    * ``z`` ``(N,)`` int16 atomic numbers (features come from the table at collate time);
    * ``src``, ``dst`` ``(E,)`` int32: bond ``e`` goes from atom ``src[e]`` to its neighbour
      ``dst[e]``; ``r`` ``(E, 3)`` float32 bond vector ``pos[dst] − pos[src] + image @ lattice`` (Å);
      ``images`` ``(E, 3)`` int8 lattice offset of ``dst``;
    * ``lg_src``, ``lg_dst`` ``(T,)`` int32: line-graph edges between bonds ``u→v`` and ``v→w``
      (angle cosines are recomputed from ``r``);
    * ``lattice`` ``(3, 3)`` float32.

    Node ``k`` is site ``k`` of the structure.

    Args:
        cutoff: two-body cutoff (Å).
        max_neighbors: bonds kept per atom (nearest first).
        three_body_cutoff: only bonds at most this long form angle triplets (Å, ≤ ``cutoff``).
    """

    name = "alignn"

    def __init__(self, cutoff: float = 8.0, max_neighbors: int = 12, three_body_cutoff: float = 8.0) -> None:
        if cutoff <= 0 or max_neighbors < 1 or not 0 < three_body_cutoff <= cutoff:
            raise ConfigError(
                f"alignn graph: need cutoff > 0, max_neighbors >= 1 and 0 < three_body_cutoff <= cutoff "
                f"(got {cutoff}, {max_neighbors}, {three_body_cutoff})"
            )
        self.cutoff = float(cutoff)
        self.max_neighbors = int(max_neighbors)
        self.three_body_cutoff = float(three_body_cutoff)

    def settings(self) -> dict:
        return {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors,
                "three_body_cutoff": self.three_body_cutoff, "atom_features": ATOM_FEATURES,
                "atom_feature_table": atom_feature_fingerprint(ATOM_FEATURES),
                "builder": f"alignn {metadata.version('alignn')} build_pure_torch_graph"}

    def featurize(self, structure: Structure, record: str = "structure") -> Arrays:
        from alignn.torch_graph_builder import build_pure_torch_graph
        from jarvis.core.atoms import pmg_to_atoms

        numbers = np.asarray(structure.atomic_numbers, dtype=np.int64)
        check_elements(numbers, ATOM_FEATURES, record)
        with torch.no_grad():
            g, lg = build_pure_torch_graph(
                atoms=pmg_to_atoms(structure), two_body_cutoff=self.cutoff,
                three_body_cutoff=self.three_body_cutoff, max_neighbors=self.max_neighbors,
                atom_features=ATOM_FEATURES, use_matscipy_topology=False, compute_line_graph=True,
            )
        src = g.src.numpy()
        counts = np.bincount(src, minlength=len(numbers))
        if (counts == 0).any():
            i = int(np.argmin(counts))
            raise RecordError(record, f"atom {i} ({structure[i].specie}) has no neighbour within {self.cutoff} Å",
                              "increase the alignn cutoff or remove this structure")
        return {
            "z": numbers.astype(np.int16),
            "src": src.astype(np.int32),
            "dst": g.dst.numpy().astype(np.int32),
            "r": g.edata["r"].numpy().astype(np.float32),
            "images": g.edata["images"].numpy().round().astype(np.int8),
            "lg_src": lg.src.numpy().astype(np.int32),
            "lg_dst": lg.dst.numpy().astype(np.int32),
            "lattice": np.asarray(structure.lattice.matrix, dtype=np.float32),
        }


@dataclass
class ALIGNNBatch:
    """A collated ALIGNN batch of ``B`` structures.

    Attributes:
        g: batched atom graph (``alignn.torch_graph_builder.TorchGraph``; ``ndata["atom_features"]``
            ``(N, 92 + extra)``, ``edata["r"]`` ``(E, 3)``).
        lg: batched line graph (nodes are the ``E`` bonds; ``edata["h"]`` ``(T,)`` angle cosines).
        lattice: ``(B, 3, 3)``.
        site_id: ``(N,)`` site of each atom node in its structure.
        node_batch: ``(N,)`` structure of each atom node.
    """

    g: object
    lg: object
    lattice: torch.Tensor
    site_id: torch.Tensor
    node_batch: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.lattice.shape[0])

    def to(self, device: torch.device | str) -> ALIGNNBatch:
        return ALIGNNBatch(self.g.to(device), self.lg.to(device), self.lattice.to(device),
                           self.site_id.to(device), self.node_batch.to(device))


class ALIGNNAdapter(StudentAdapter):
    """ALIGNN (pure-torch ``ALIGNNAtomWisePure``) as a crysdistill student.

    The node embedding is the atom vector after the last atom-graph layer, ``(N, hidden_features)``;
    the graph embedding is its mean per structure, the vector ALIGNN's output layer reads.
    """

    name = "alignn"
    accepts_extra_atom_features = True

    @classmethod
    def default_config(cls) -> dict:
        return {
            "alignn_layers": 2, "gcn_layers": 2, "hidden_features": 64, "embedding_features": 64,
            "edge_input_features": 80, "triplet_input_features": 40,
            "cutoff": 8.0, "max_neighbors": 12, "three_body_cutoff": 8.0,
        }

    def build(self) -> None:
        from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

        c = self.config
        if int(c["alignn_layers"]) < 0 or int(c["gcn_layers"]) < 0 or int(c["hidden_features"]) < 1:
            raise ConfigError("alignn: alignn_layers and gcn_layers must be >= 0, hidden_features >= 1")
        self._featurizer = ALIGNNGraphFeaturizer(float(c["cutoff"]), int(c["max_neighbors"]),
                                                 float(c["three_body_cutoff"]))
        self.model_config = ALIGNNAtomWisePureConfig(
            name="alignn_atomwise_pure",
            alignn_layers=int(c["alignn_layers"]), gcn_layers=int(c["gcn_layers"]),
            atom_input_features=atom_feature_table(ATOM_FEATURES)[0].shape[1] + self.extra_atom_features,
            edge_input_features=int(c["edge_input_features"]),
            triplet_input_features=int(c["triplet_input_features"]),
            embedding_features=int(c["embedding_features"]), hidden_features=int(c["hidden_features"]),
            output_features=self.n_targets, calculate_gradient=False, use_penalty=False, use_zbl=False,
            energy_mult_natoms=False,  # energy scaling (force fields) breaks with several targets
            three_body_cutoff=float(c["three_body_cutoff"]),
        )
        self.model = ALIGNNAtomWisePure(self.model_config)

    @property
    def embedding_dim(self) -> int:
        return int(self.config["hidden_features"])

    def featurizer(self) -> ALIGNNGraphFeaturizer:
        return self._featurizer

    def collate(self, graphs: Sequence[Arrays],
                extra_atom_features: Sequence[torch.Tensor] | None = None) -> ALIGNNBatch:
        """Rebuild ``TorchGraph`` pairs from the arrays and batch them with ``batch_torch_graph_pairs``."""
        from alignn.torch_graph_builder import TorchGraph, batch_torch_graph_pairs, torch_bond_cosines

        table, _ = atom_feature_table(ATOM_FEATURES)
        pairs = []
        for a in graphs:
            z = a["z"].astype(np.int64)
            r = torch.from_numpy(a["r"].astype(np.float32))
            images = torch.from_numpy(a["images"].astype(np.float32))
            lg_src = torch.from_numpy(a["lg_src"].astype(np.int64))
            lg_dst = torch.from_numpy(a["lg_dst"].astype(np.int64))
            g = TorchGraph(num_nodes=len(z), src=torch.from_numpy(a["src"].astype(np.int64)),
                           dst=torch.from_numpy(a["dst"].astype(np.int64)),
                           ndata={"atom_features": torch.from_numpy(table[z]), "Z": torch.from_numpy(z)},
                           edata={"r": r, "images": images})
            lg = TorchGraph(num_nodes=g.num_edges, src=lg_src, dst=lg_dst, ndata={"r": r, "images": images},
                            edata={"h": torch_bond_cosines(r[lg_src], r[lg_dst])})
            pairs.append((g, lg))
        g, lg = batch_torch_graph_pairs(pairs)
        counts = [int(a["z"].shape[0]) for a in graphs]
        g.ndata["atom_features"] = add_extra_atom_features(g.ndata["atom_features"], counts, extra_atom_features,
                                                           self.extra_atom_features)
        lattice = torch.from_numpy(np.stack([a["lattice"] for a in graphs]).astype(np.float32))
        site_id = torch.cat([torch.arange(n) for n in counts])
        return ALIGNNBatch(g, lg, lattice, site_id, g.node_batch_id)

    def _last_atom_layer(self) -> nn.Module:
        if len(self.model.gcn_layers):
            return self.model.gcn_layers[-1]
        if len(self.model.alignn_layers):
            return self.model.alignn_layers[-1]
        return self.model.atom_embedding

    def forward(self, batch: ALIGNNBatch) -> StudentOutput:
        """Run ALIGNN and collect its atom embeddings.

        Shapes: prediction ``(B, T)``, node embedding ``(N, hidden_features)`` (atom nodes only),
        graph embedding ``(B, hidden_features)``.
        """
        seen: dict[str, torch.Tensor] = {}

        def keep_atoms(module: nn.Module, inputs: tuple, output: object) -> None:
            seen["x"] = output[0] if isinstance(output, tuple) else output  # layers return (x, y[, z])

        def keep_pooled(module: nn.Module, inputs: tuple) -> None:
            seen["pooled"] = inputs[0]

        hooks = [self._last_atom_layer().register_forward_hook(keep_atoms),
                 self.model.fc.register_forward_pre_hook(keep_pooled)]
        try:
            out = self.model((batch.g, batch.lg, batch.lattice))["out"]
        finally:
            for h in hooks:
                h.remove()
        return StudentOutput(prediction=out.reshape(batch.num_graphs, self.n_targets), node_embedding=seen["x"],
                             site_index=batch.site_id, node_batch=batch.node_batch, graph_embedding=seen["pooled"])
