"""Conformance tests every student adapter gets for free.

Subclass :class:`StudentConformance` in a pytest module, name the registered student and give it a
small config::

    from crysdistill.testing import StudentConformance

    class TestMyStudent(StudentConformance):
        student = "mystudent"          # entry-point name in the crysdistill.students group
        config = {"width": 16}         # small, so the tests run in seconds

The tests build the student through the entry-point registry (as training does) and check, on a
set of structures built in code (:func:`fixture_structures`: a one-atom cell, a two-atom cell in
which every atom sees the same neighbours many times through periodic images, rocksalt NaCl,
perovskite SrTiO3 and a monoclinic ZrO2 with its sites shuffled):

* the contract: class, name, API version, JSON-serialisable default config, ``describe()`` round
  trip, unknown config keys rejected;
* the featuriser: picklable, deterministic, only plain numpy arrays (cacheable without pickle),
  one-line :class:`~crysdistill.errors.RecordError` for an isolated atom and an unknown element;
* the outputs: shapes, dtypes, finite values, site mapping (every site of every structure has an
  atom node, site indices in range) and node batch indices;
* a batch gives the same outputs as its structures one at a time (eval mode);
* permuting the sites of a structure permutes its atom embeddings accordingly (so
  ``site_index`` really names the site the teacher's embedding belongs to);
* distillation: :class:`~crysdistill.distill.losses.DistillationLoss` with a projection against an
  untrained :class:`~crysdistill.teacher.encoder.CrysGNNEncoder` (eval mode, ``no_grad``) sends
  nonzero gradients to the student and the projection, none to the teacher, and leaves the
  teacher's weights and buffers untouched; a few optimiser steps lower the training loss;
* checkpoints: ``save_student`` / ``load_student`` (through the registry) reproduce predictions;
* extra atom features (adapters with ``accepts_extra_atom_features``) reach the prediction of
  their own structure only.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crysdistill.data.batch import collate as collate_crystal_graphs
from crysdistill.data.cache import pack_arrays, unpack_arrays
from crysdistill.data.graph import Arrays, CrystalGraphFeaturizer, GraphSettings
from crysdistill.distill.losses import DistillationLoss, TeacherTargets
from crysdistill.errors import ConfigError, RecordError
from crysdistill.students.base import STUDENT_API_VERSION, StudentAdapter, StudentOutput
from crysdistill.students.checkpoint import load_student, save_student
from crysdistill.students.registry import build_student, get_student
from crysdistill.teacher.encoder import CrysGNNEncoder

#: permutation applied to the sites of the monoclinic ZrO2 fixture (and used by the equivariance test)
_ZRO2_ORDER = [7, 2, 11, 0, 5, 9, 1, 10, 3, 6, 4, 8]


def fixture_structures() -> dict[str, Structure]:
    """Small structures that exercise the corners of crystal graphs.

    Returns:
        name → structure:

        * ``Cu_fcc_primitive``: one atom per cell; all its neighbours are its own periodic images;
        * ``CsCl``: two atoms in a 4.1 Å cube; each sees the other and itself many times through
          periodic images;
        * ``NaCl_rocksalt``: the 8-atom conventional cell, two elements;
        * ``SrTiO3_perovskite``: 5 atoms, three elements;
        * ``ZrO2_monoclinic``: baddeleyite (P2_1/c, 12 atoms), low symmetry, with its sites in a
          shuffled order so that an adapter that reorders atoms is caught.
    """
    zro2 = Structure.from_spacegroup(
        "P2_1/c", Lattice.monoclinic(5.15, 5.21, 5.31, 99.2), ["Zr", "O", "O"],
        [[0.2754, 0.0395, 0.2083], [0.0700, 0.3317, 0.3447], [0.4496, 0.7569, 0.4792]],
    )
    return {
        "Cu_fcc_primitive": Structure(Lattice([[0, 1.805, 1.805], [1.805, 0, 1.805], [1.805, 1.805, 0]]),
                                      ["Cu"], [[0, 0, 0]]),
        "CsCl": Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "NaCl_rocksalt": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                                   [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "SrTiO3_perovskite": Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        "ZrO2_monoclinic": Structure.from_sites([zro2[i] for i in _ZRO2_ORDER]),
    }


def _per_site_mean(out: StudentOutput, b: int, n_sites: int) -> torch.Tensor:
    """Mean atom embedding of each site of structure ``b``: ``(n_sites, D)``."""
    mask = out.node_batch == b
    emb, sites = out.node_embedding[mask], out.site_index[mask]
    total = torch.zeros(n_sites, emb.shape[1], dtype=emb.dtype).index_add_(0, sites, emb)
    count = torch.zeros(n_sites, dtype=emb.dtype).index_add_(0, sites, torch.ones_like(sites, dtype=emb.dtype))
    return total / count.clamp_min(1).unsqueeze(1)


class StudentConformance:
    """Mixin of pytest tests that any :class:`~crysdistill.students.base.StudentAdapter` must pass.

    Attributes:
        student: entry-point name of the adapter under test (required).
        config: model config overrides; keep the model small.
        n_targets: targets predicted in the tests (2, so a squeezed output is caught).
        atol: absolute tolerance of the batch-versus-single and permutation comparisons.
        one_node_per_site: every site has exactly one atom node (set ``False`` for a student whose
            graph has several nodes per site).
    """

    student: ClassVar[str] = ""
    config: ClassVar[dict[str, Any]] = {}
    n_targets: ClassVar[int] = 2
    atol: ClassVar[float] = 1e-5
    one_node_per_site: ClassVar[bool] = True

    # ---- helpers ------------------------------------------------------------------------------

    def structures(self) -> dict[str, Structure]:
        """The structures the tests run on (override to add your own)."""
        return fixture_structures()

    def make_adapter(self, extra_atom_features: int = 0, seed: int = 0) -> StudentAdapter:
        """Build the student through the registry with :attr:`config`, seeded."""
        if not self.student:
            raise TypeError(f"{type(self).__name__} must set `student` to the adapter's entry-point name")
        torch.manual_seed(seed)
        return build_student(self.student, dict(self.config), n_targets=self.n_targets,
                             extra_atom_features=extra_atom_features)

    @pytest.fixture(scope="class", autouse=True)
    def _one_thread(self):
        """Run on one intra-op thread: the test graphs are tiny, and on a shared machine extra
        threads only wait for each other."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    @pytest.fixture(scope="class")
    def conformance_data(self) -> tuple[list[str], list[Structure], list[Arrays]]:
        """Names, structures and the student's graphs of :meth:`structures`."""
        structures = self.structures()
        featurizer = self.make_adapter().featurizer()
        graphs = [featurizer.featurize(s, name) for name, s in structures.items()]
        return list(structures), list(structures.values()), graphs

    # ---- the contract -------------------------------------------------------------------------

    def test_registered_class_and_config(self) -> None:
        cls = get_student(self.student)
        assert issubclass(cls, StudentAdapter)
        assert cls.name == self.student, f"{cls.__name__}.name is {cls.name!r}, registered as {self.student!r}"
        assert cls.api_version == STUDENT_API_VERSION
        defaults = cls.default_config()
        assert json.loads(json.dumps(defaults)) == defaults, "default_config() must be JSON-serialisable"
        unknown = set(self.config) - set(defaults)
        assert not unknown, f"test config has keys outside default_config(): {sorted(unknown)}"
        with pytest.raises(ConfigError):
            build_student(self.student, {"no_such_key_xyz": 1})

    def test_describe_round_trip(self) -> None:
        adapter = self.make_adapter()
        d = adapter.describe()
        assert json.loads(json.dumps(d)) == d, "describe() must be JSON-serialisable"
        rebuilt = build_student(d["name"], d["config"], n_targets=d["n_targets"],
                                extra_atom_features=d["extra_atom_features"])
        assert rebuilt.describe() == d
        shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes

    # ---- the featuriser -----------------------------------------------------------------------

    def test_featurizer_deterministic_and_cacheable(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        featurizer = self.make_adapter().featurizer()
        json.dumps(featurizer.settings())
        clone = pickle.loads(pickle.dumps(featurizer))
        assert clone.fingerprint() == featurizer.fingerprint() == self.make_adapter(seed=1).featurizer().fingerprint()
        for name, s, g in zip(names, structures, graphs):
            again = clone.featurize(s.copy(), name)
            assert sorted(again) == sorted(g), name
            for k, v in g.items():
                assert isinstance(v, np.ndarray) and v.dtype.kind in "biuf", f"{name}: array {k!r} is {type(v)}"
                assert v.dtype == again[k].dtype and np.array_equal(v, again[k]), f"{name}: {k!r} not deterministic"
            unpacked = unpack_arrays(pack_arrays(g))
            assert all(np.array_equal(unpacked[k], g[k]) for k in g), f"{name}: pack/unpack changed the arrays"

    @pytest.mark.parametrize("case", ["isolated atom", "unknown element"])
    def test_unrepresentable_structure_raises_record_error(self, case: str) -> None:
        if case == "isolated atom":
            structure = Structure(Lattice.cubic(40.0), ["Cu"], [[0, 0, 0]])
        else:
            structure = Structure(Lattice.cubic(3.0), ["Og"], [[0, 0, 0]])
        with pytest.raises(RecordError) as info:
            self.make_adapter().featurizer().featurize(structure, "bad.cif")
        msg = str(info.value)
        assert "bad.cif" in msg and "\n" not in msg, f"RecordError must name the record in one line: {msg!r}"

    # ---- outputs ------------------------------------------------------------------------------

    def test_output_shapes_and_site_mapping(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        adapter = self.make_adapter().eval()
        batch = adapter.to_device(adapter.collate(graphs), torch.device("cpu"))
        with torch.no_grad():
            out = adapter(batch)
        n_graphs = len(graphs)
        assert isinstance(out, StudentOutput)
        assert tuple(out.prediction.shape) == (n_graphs, self.n_targets)
        assert out.node_embedding.dim() == 2 and out.node_embedding.shape[1] == adapter.embedding_dim
        n_nodes = out.node_embedding.shape[0]
        for field in ("site_index", "node_batch"):
            t = getattr(out, field)
            assert t.dtype == torch.long and tuple(t.shape) == (n_nodes,), f"{field}: {t.dtype} {tuple(t.shape)}"
        assert tuple(out.graph_embedding.shape) == (n_graphs, adapter.graph_embedding_dim)
        for t in (out.prediction, out.node_embedding, out.graph_embedding):
            assert torch.isfinite(t).all()
        assert ((out.node_batch >= 0) & (out.node_batch < n_graphs)).all()
        for b, (name, s) in enumerate(zip(names, structures)):
            sites = out.site_index[out.node_batch == b]
            assert ((sites >= 0) & (sites < len(s))).all(), f"{name}: site index out of range"
            assert set(sites.tolist()) == set(range(len(s))), f"{name}: not every site has an atom node"
            if self.one_node_per_site:
                assert sorted(sites.tolist()) == list(range(len(s))), f"{name}: a site has several atom nodes"

    def test_batch_equals_single(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        adapter = self.make_adapter().eval()
        with torch.no_grad():
            batched = adapter(adapter.collate(graphs))
            for b, (name, s, g) in enumerate(zip(names, structures, graphs)):
                single = adapter(adapter.collate([g]))
                torch.testing.assert_close(batched.prediction[b], single.prediction[0], atol=self.atol, rtol=1e-4,
                                           msg=lambda m, name=name: f"{name}: prediction {m}")
                torch.testing.assert_close(batched.graph_embedding[b], single.graph_embedding[0], atol=self.atol,
                                           rtol=1e-4, msg=lambda m, name=name: f"{name}: graph embedding {m}")
                torch.testing.assert_close(_per_site_mean(batched, b, len(s)), _per_site_mean(single, 0, len(s)),
                                           atol=self.atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: atoms {m}")

    def test_site_permutation_moves_embeddings(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        s = structures[names.index("ZrO2_monoclinic")]
        order = [3, 7, 0, 11, 5, 1, 9, 2, 10, 6, 4, 8]
        permuted = Structure.from_sites([s[i] for i in order])  # site k of `permuted` is site order[k] of `s`
        adapter = self.make_adapter().eval()
        featurizer = adapter.featurizer()
        with torch.no_grad():
            a = adapter(adapter.collate([featurizer.featurize(s)]))
            b = adapter(adapter.collate([featurizer.featurize(permuted)]))
        torch.testing.assert_close(b.prediction, a.prediction, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_per_site_mean(b, 0, len(s)), _per_site_mean(a, 0, len(s))[order],
                                   atol=1e-4, rtol=1e-4)

    # ---- distillation -------------------------------------------------------------------------

    @staticmethod
    def _teacher_targets(structures: list[Structure]) -> tuple[CrysGNNEncoder, TeacherTargets]:
        torch.manual_seed(123)
        teacher = CrysGNNEncoder().eval()
        featurizer = CrystalGraphFeaturizer(GraphSettings(symmetry=False))
        batch = collate_crystal_graphs([featurizer.featurize(s) for s in structures], featurizer.graph_settings)
        with torch.no_grad():
            out = teacher(batch)
        return teacher, TeacherTargets(node=out.node, ptr=batch.ptr, graph=out.graph)

    def test_distillation_gradients_reach_student_not_teacher(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        teacher, targets = self._teacher_targets(structures)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        assert not targets.node.requires_grad
        adapter = self.make_adapter().train()
        loss_fn = DistillationLoss(adapter.embedding_dim, teacher.width, adapter.graph_embedding_dim,
                                   node_weight=1.0, graph_weight=1.0, projection=True)
        out = adapter(adapter.collate(graphs))
        out.node_embedding.retain_grad()
        loss, parts = loss_fn(out, targets)
        assert torch.isfinite(loss) and loss.item() > 0 and set(parts) == {"node", "graph"}
        loss.backward()
        assert out.node_embedding.grad is not None and out.node_embedding.grad.abs().sum() > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters()), \
            "no student parameter received a gradient from the distillation loss"
        for name, p in loss_fn.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"projection {name} has no gradient"
        assert all(p.grad is None for p in teacher.parameters()), "gradient reached the teacher"
        torch.optim.SGD([*adapter.parameters(), *loss_fn.parameters()], lr=0.1).step()
        after = teacher.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or buffers changed"

    def test_training_steps_lower_the_loss(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        _, targets = self._teacher_targets(structures)
        adapter = self.make_adapter().train()
        loss_fn = DistillationLoss(adapter.embedding_dim, targets.node.shape[1], node_weight=0.5)
        y = torch.linspace(-1.0, 1.0, len(graphs) * self.n_targets).reshape(len(graphs), self.n_targets)
        opt = torch.optim.Adam([*adapter.parameters(), *loss_fn.parameters()], lr=3e-3)
        batch = adapter.collate(graphs)
        losses = []
        for _ in range(12):
            opt.zero_grad()
            out = adapter(batch)
            distill, _ = loss_fn(out, targets)
            loss = torch.nn.functional.mse_loss(out.prediction, y) + distill
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], f"loss did not decrease: {losses}"

    # ---- checkpoints --------------------------------------------------------------------------

    def test_save_load_round_trip(self, conformance_data, tmp_path) -> None:
        names, structures, graphs = conformance_data
        adapter = self.make_adapter()
        batch = adapter.collate(graphs)
        adapter.train()
        with torch.no_grad():
            adapter(batch)  # moves normalisation statistics away from their initial values
        adapter.eval()
        with torch.no_grad():
            expected = adapter(batch).prediction
        save_student(adapter, tmp_path / "student.pt", note="conformance")
        loaded, ckpt = load_student(tmp_path / "student.pt")
        assert type(loaded) is type(adapter) and not loaded.training
        assert loaded.describe() == adapter.describe() and ckpt["note"] == "conformance"
        with torch.no_grad():
            got = loaded(loaded.collate(graphs)).prediction
        torch.testing.assert_close(got, expected, atol=0, rtol=0)

    # ---- extra atom features ------------------------------------------------------------------

    def test_extra_atom_features(self, conformance_data) -> None:
        names, structures, graphs = conformance_data
        cls = get_student(self.student)
        if not cls.accepts_extra_atom_features:
            with pytest.raises(ConfigError):
                self.make_adapter(extra_atom_features=3)
            return
        adapter = self.make_adapter(extra_atom_features=3).eval()
        assert adapter.describe()["extra_atom_features"] == 3
        gen = torch.Generator().manual_seed(0)
        extra = [torch.randn(len(s), 3, generator=gen) for s in structures]
        changed = [e.clone() for e in extra]
        changed[0] = changed[0] + 1.0
        with torch.no_grad():
            a = adapter(adapter.collate(graphs, extra_atom_features=extra)).prediction
            b = adapter(adapter.collate(graphs, extra_atom_features=changed)).prediction
        assert not torch.allclose(a[0], b[0]), "extra atom features do not reach the prediction"
        torch.testing.assert_close(a[1:], b[1:], atol=self.atol, rtol=1e-4,
                                   msg=lambda m: f"extra features of structure 0 changed other structures: {m}")
