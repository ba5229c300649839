"""SevenNet-0 (Park et al., J. Chem. Theory Comput. 20, 4857, 2024) as a teacher.

An E(3)-equivariant universal interatomic potential (NequIP architecture) trained on MPtrj
(energies, forces, stresses). Checkpoints ship inside the ``sevenn`` wheel: ``7net-0`` (the
default) and ``7net-l3i5``; models that download at run time (``7net-omat``, ``7net-mf-ompa``,
``omni``) are refused.

Layers: the atom features after ``onehot_to_feature_x`` (layer 0) and after each
``{b}_equivariant_gate`` (layers 1–5). Only the scalar ``0e`` channels are kept (128 per layer):
the ``l = 1, 2`` channels rotate with the crystal and must not reach an invariant student. Graphs
come from SevenNet's own builder (``unlabeled_atoms_to_graph``, 5 Å); the force head is removed so
the model runs under ``torch.no_grad()``.
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

LEAKED = ("formation_energy_per_atom", "energy_per_atom", "energy", "total_energy", "e_form", "e_above_hull",
          "energy_above_hull")

#: shipped checkpoints (loading needs no network); multi-fidelity 7net-mf-0 needs a modality and is left out
VARIANTS = ("7net-0", "7net-l3i5")


class SevenNetTeacher(TeacherAdapter):
    """SevenNet's scalar atom features, block by block."""

    name = "sevennet"
    default_variant = "7net-0"
    package = "sevenn"
    batch_size = 16

    @classmethod
    def variants(cls) -> list[str]:
        return list(VARIANTS)

    def load(self) -> None:
        if self.variant not in VARIANTS:
            raise UserError(f"sevennet has no shipped checkpoint {self.variant!r} (models that download at run time "
                            f"are not supported); available: {', '.join(VARIANTS)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e3nn's torch.jit deprecation warnings under recent torch
                import sevenn._keys as keys
                import sevenn.util
                from sevenn.atom_graph_data import AtomGraphData
                from sevenn.train.dataload import unlabeled_atoms_to_graph
        except ImportError as exc:
            raise missing_package(self.name, self.package, exc) from None
        self._keys, self._data_cls, self._to_graph = keys, AtomGraphData, unlabeled_atoms_to_graph
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            cp = sevenn.util.load_checkpoint(self.variant)
            model = cp.build_model()
        if "force_output" in model._modules:
            model.delete_module_by_key("force_output")  # no forces: the model then runs under no_grad
        model.set_is_batch_data(True)
        self.model = model.to(self.device)
        self._cutoff = float(cp.config["cutoff"])
        self._species = set(cp.config["chemical_species"]) if isinstance(cp.config.get("chemical_species"), list) \
            else None
        names = ["onehot_to_feature_x"] + sorted((k for k in model._modules if k.endswith("_equivariant_gate")),
                                                 key=lambda k: int(k.split("_")[0]))
        self._names = names
        self._scalars = [self._n_scalars(model._modules[n]) for n in names]

    @staticmethod
    def _n_scalars(module) -> int:
        """Number of leading ``0e`` channels of a module's output irreps."""
        irreps = getattr(module, "irreps_out", None)
        if irreps is None and "gate" in module._modules:
            irreps = module._modules["gate"].irreps_out
        n = 0
        for mul, ir in irreps:
            if ir.l != 0 or ir.p != 1:
                break
            n += mul
        return n

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @property
    def layer_names(self) -> list[str]:
        return list(self._names)

    @property
    def layer_widths(self) -> list[int]:
        return list(self._scalars)

    @property
    def settings(self) -> dict:
        return {"cutoff": self._cutoff, "channels": "0e scalars only"}

    @property
    def training(self) -> TrainingData:
        return TrainingData("MPtrj: 1.58 M DFT (PBE/PBE+U) frames of Materials Project relaxations",
                            ("energy", "forces", "stress"), LEAKED,
                            "Materials Project structures and relaxation trajectories")

    def check(self, structure: Structure) -> str | None:
        if self._species is not None:
            bad = sorted({el.symbol for el in structure.composition.elements} - self._species)
            if bad:
                return f"element(s) {', '.join(bad)} outside SevenNet's {self.variant} species"
        return None

    def inputs(self, structures: Sequence[Structure]) -> list:
        from pymatgen.io.ase import AseAtomsAdaptor

        return [self._data_cls.from_numpy_dict(self._to_graph(AseAtomsAdaptor.get_atoms(s), self._cutoff))
                for s in structures]

    def forward(self, inputs: list) -> TeacherOutput:
        from torch_geometric.data import Batch

        key = self._keys.NODE_FEATURE
        captured: list[torch.Tensor] = []
        hooks = [self.model._modules[n].register_forward_hook(
            lambda _m, _i, out, w=w: captured.append(out[key][:, :w]))
            for n, w in zip(self._names, self._scalars)]
        try:
            batch = Batch.from_data_list(inputs).to(self.device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model(batch)
        finally:
            for h in hooks:
                h.remove()
        sizes = [int(d.num_nodes) for d in inputs]
        ptr = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
        return TeacherOutput(captured, ptr)

    def blocks(self) -> list[torch.nn.Module]:
        return [self.model._modules[n] for n in self._names]

    def embed(self, structures: Sequence[Structure]) -> TeacherOutput:
        data = self.inputs(structures)
        with torch.no_grad():
            out = self.forward(data)
        return TeacherOutput([x.detach().float().cpu() for x in out.layers], out.ptr)
