"""CHGNet (Deng et al., Nature Machine Intelligence 5, 1031, 2023) as a teacher.

A universal interatomic potential trained on MPtrj (1.58 M DFT frames of Materials Project
relaxations: energies, forces, stresses and magnetic moments). The checkpoints ship inside the
``chgnet`` wheel (``0.3.0``, the default; ``0.2.0``; ``r2scan``), so nothing is downloaded.

Layers (forward hooks, 64 wide each): ``atom_embedding`` (layer 0) and the output of each of the
``atom_conv_layers`` (layers 1–4, the last before the readout norm). These are invariant by
construction (CHGNet's messages use distances and angles only). Graphs come from CHGNet's own
``CrystalGraphConverter`` (6 Å atom graph, 3 Å bond graph); it rejects an atom with no neighbour
within 6 Å, which :meth:`CHGNetTeacher.check` reports up front.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pymatgen.core import Structure

from crysdistill.errors import UserError
from crysdistill.teachers.base import TeacherAdapter, TeacherOutput, TrainingData, missing_package

#: MPtrj's labels give these user-data targets away (MP energies of nearly every MP structure).
LEAKED = ("formation_energy_per_atom", "energy_per_atom", "energy", "total_energy", "e_form", "total_magnetization",
          "magmom", "magnetization", "e_above_hull", "energy_above_hull")


class CHGNetTeacher(TeacherAdapter):
    """CHGNet's atom features, layer by layer."""

    name = "chgnet"
    default_variant = "0.3.0"
    package = "chgnet"
    batch_size = 32

    @classmethod
    def variants(cls) -> list[str]:
        return ["0.3.0", "0.2.0", "r2scan"]

    def load(self) -> None:
        if self.variant not in self.variants():
            raise UserError(f"chgnet has no shipped checkpoint {self.variant!r}; available: {', '.join(self.variants())}")
        try:
            from chgnet.model import CHGNet
        except ImportError as exc:
            raise missing_package(self.name, self.package, exc) from None
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner even with verbose=False
            self.model = CHGNet.load(model_name=self.variant, use_device=str(self.device), verbose=False)
        self._blocks = [self.model.atom_embedding, *self.model.atom_conv_layers]
        self._cutoff = float(self.model.graph_converter.atom_graph_cutoff)
        self._n_elements = int(self.model.atom_embedding.embedding.num_embeddings)

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @property
    def layer_names(self) -> list[str]:
        return ["atom_embedding"] + [f"atom_conv_layers.{k}" for k in range(len(self._blocks) - 1)]

    @property
    def layer_widths(self) -> list[int]:
        return [int(self.model.atom_fea_dim)] * len(self._blocks)

    @property
    def settings(self) -> dict:
        return {"atom_graph_cutoff": self._cutoff,
                "bond_graph_cutoff": float(self.model.graph_converter.bond_graph_cutoff)}

    @property
    def training(self) -> TrainingData:
        if self.variant == "r2scan":
            return TrainingData("MPtrj (PBE) fine-tuned on MP r2SCAN calculations",
                                ("energy", "forces", "stress", "magnetic moments"), LEAKED,
                                "Materials Project structures and relaxation trajectories")
        return TrainingData("MPtrj: 1.58 M DFT (PBE/PBE+U) frames of Materials Project relaxations",
                            ("energy", "forces", "stress", "magnetic moments"), LEAKED,
                            "Materials Project structures and relaxation trajectories")

    def check(self, structure: Structure) -> str | None:
        z = np.asarray(structure.atomic_numbers)
        if (z < 1).any() or (z > self._n_elements).any():
            bad = sorted({structure[i].specie.symbol for i in np.flatnonzero((z < 1) | (z > self._n_elements))})
            return f"element(s) {', '.join(bad)} outside CHGNet's table (Z 1–{self._n_elements})"
        centers, _, _, _ = structure.get_neighbor_list(self._cutoff)
        counts = np.bincount(centers.astype(np.int64), minlength=len(structure))
        if (counts == 0).any():
            i = int(np.argmin(counts))
            return f"atom {i} ({structure[i].specie}) has no neighbour within CHGNet's {self._cutoff:g} Å cutoff"
        return None

    def inputs(self, structures: Sequence[Structure]) -> list:
        return [self.model.graph_converter(s) for s in structures]

    def forward(self, inputs: list) -> TeacherOutput:
        captured: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out)) for b in self._blocks]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CHGNet's torch.tensor(list of tensors) warning under recent torch
                self.model(inputs, task="e")
        finally:
            for h in hooks:
                h.remove()
        sizes = [int(g.atomic_number.shape[0]) for g in inputs]
        ptr = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
        return TeacherOutput(captured, ptr)

    def blocks(self) -> list[torch.nn.Module]:
        return list(self._blocks)

    def embed(self, structures: Sequence[Structure]) -> TeacherOutput:
        graphs = self.inputs(structures)
        with torch.no_grad():
            out = self.forward(graphs)
        return TeacherOutput([x.detach().float().cpu() for x in out.layers], out.ptr)
