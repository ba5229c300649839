"""Conformance tests every teacher plugin gets for free: the teacher twin of ``StudentConformance``.

Subclass :class:`TeacherConformance` in a pytest module and name the registered teacher::

    from crysdistill.testing import TeacherConformance

    class TestMyTeacher(TeacherConformance):
        teacher = "myteacher"          # entry-point name in the crysdistill.teachers group
        variant = None                 # or a checkpoint the plugin ships

The teacher is loaded once per class through the registry (as ``crysdistill train --teacher``
does) and checked on the structures of :func:`crysdistill.testing.fixture_structures` (one-atom
cell, CsCl, rocksalt NaCl, perovskite SrTiO3, monoclinic ZrO2 with shuffled sites):

* the contract: class, name, API version, one width per layer name, a JSON-serialisable
  ``describe()`` with the training data, a stable fingerprint (the same after reloading);
* frozen: evaluation mode, no parameter requires a gradient, weights and buffers unchanged after use;
* outputs: one ``(n_sites, width)`` finite block per layer and structure, ``ptr`` matching the sites;
* the structure's own site order is kept: permuting the sites permutes the rows the same way;
* invariance: rotating the crystal, translating every atom, or permuting sites changes nothing
  (so only invariant channels reach a student);
* a batch gives each structure what it gets alone; two calls give the same result;
* the embedding cache: :func:`crysdistill.distill.cache.embed_records` computes once and returns
  the same arrays the second time; a structure the teacher rejects in :meth:`check` is named, in
  one line, by :func:`~crysdistill.distill.cache.check_records`.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from crysdistill.data.records import Record
from crysdistill.errors import RecordError
from crysdistill.teachers.base import TEACHER_API_VERSION, TeacherAdapter, TeacherOutput
from crysdistill.teachers.registry import get_teacher_class, load_teacher
from crysdistill.testing.conformance import _ZRO2_ORDER, fixture_structures


def _rotated(s: Structure, angle: float = 37.0, axis=(1.0, 1.0, 0.3)) -> Structure:
    """The same crystal turned in space: lattice vectors and Cartesian positions rotated together."""
    op = SymmOp.from_origin_axis_angle((0, 0, 0), axis, angle)
    lattice = Lattice(np.array([op.apply_rotation_only(v) for v in s.lattice.matrix]))
    return Structure(lattice, s.species, s.frac_coords)


class TeacherConformance:
    """Mixin of pytest tests that any :class:`~crysdistill.teachers.base.TeacherAdapter` must pass.

    Attributes:
        teacher: entry-point name of the teacher under test (required).
        variant: the variant to load (``None`` = the plugin's default).
        atol, rtol: tolerances of the invariance and batch comparisons (float32 models that
            build their own neighbour lists from rotated or shifted coordinates differ by up to a few 1e-4;
            channels that are not invariant differ by orders of magnitude more).
    """

    teacher: ClassVar[str] = ""
    variant: ClassVar[str | None] = None
    atol: ClassVar[float] = 5e-4
    rtol: ClassVar[float] = 5e-4

    def structures(self) -> dict[str, Structure]:
        """The structures the tests run on (override to add your own)."""
        return fixture_structures()

    def spec(self) -> str:
        if not self.teacher:
            raise TypeError(f"{type(self).__name__} must set `teacher` to the plugin's entry-point name")
        return f"{self.teacher}:{self.variant}" if self.variant else self.teacher

    @pytest.fixture(scope="class")
    def loaded(self) -> TeacherAdapter:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield load_teacher(self.spec())
        torch.set_num_threads(n)

    def _close(self, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        err = float((a - b).abs().max()) if a.numel() else 0.0
        assert torch.allclose(a, b, atol=self.atol, rtol=self.rtol), f"{what}: max difference {err:.3g}"

    # ---- the contract -------------------------------------------------------------------------

    def test_registered_class_and_description(self, loaded: TeacherAdapter) -> None:
        cls = get_teacher_class(self.teacher)
        assert issubclass(cls, TeacherAdapter) and isinstance(loaded, cls)
        assert cls.name == self.teacher, f"{cls.__name__}.name is {cls.name!r}, registered as {self.teacher!r}"
        assert cls.api_version == TEACHER_API_VERSION
        assert len(loaded.layer_names) == len(loaded.layer_widths) >= 1
        assert all(int(w) > 0 for w in loaded.layer_widths)
        d = loaded.describe()
        assert json.loads(json.dumps(d)) == d, "describe() must be JSON-serialisable"
        assert d["trained_on"]["dataset"], "a teacher must say what it was trained on"
        assert isinstance(loaded.fingerprint, str) and loaded.fingerprint
        assert load_teacher(loaded.spec).fingerprint == loaded.fingerprint, "fingerprint must be stable across loads"
        assert loaded.default_variant in cls.variants() or not cls.variants()

    def test_frozen(self, loaded: TeacherAdapter) -> None:
        assert not loaded.module.training, "the teacher must be in evaluation mode"
        assert not any(p.requires_grad for p in loaded.module.parameters()), "the teacher's weights must be frozen"

    # ---- outputs ------------------------------------------------------------------------------

    def test_outputs_have_one_row_per_site_and_layer(self, loaded: TeacherAdapter) -> None:
        structures = list(self.structures().values())
        out = loaded.embed(structures)
        assert isinstance(out, TeacherOutput)
        sizes = [len(s) for s in structures]
        assert out.ptr.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
        assert len(out.layers) == len(loaded.layer_widths)
        for k, (x, w) in enumerate(zip(out.layers, loaded.layer_widths)):
            assert tuple(x.shape) == (sum(sizes), w), f"layer {k}: shape {tuple(x.shape)}, expected ({sum(sizes)}, {w})"
            assert x.dtype.is_floating_point and torch.isfinite(x).all(), f"layer {k}: non-finite values"
            assert not x.requires_grad, f"layer {k} carries a gradient graph: embed must run under no_grad"

    def test_batch_equals_single_and_deterministic(self, loaded: TeacherAdapter) -> None:
        structures = self.structures()
        batch = loaded.embed(list(structures.values()))
        again = loaded.embed(list(structures.values()))
        for b, name in enumerate(structures):
            single = loaded.embed([structures[name]])
            for k, (x, y, z) in enumerate(zip(batch.structure(b), single.structure(0), again.structure(b))):
                self._close(x, y, f"{name} layer {k}, batch vs alone")
                assert torch.equal(x, z), f"{name} layer {k}: two calls differ"

    def test_site_order_kept_under_permutation(self, loaded: TeacherAdapter) -> None:
        zro2 = self.structures()["ZrO2_monoclinic"]
        order = np.argsort(_ZRO2_ORDER)  # undo the fixture's shuffle
        restored = Structure.from_sites([zro2[i] for i in order])
        a, b = loaded.embed([zro2]), loaded.embed([restored])
        for k, (x, y) in enumerate(zip(a.layers, b.layers)):
            self._close(x[torch.as_tensor(order)], y, f"ZrO2 layer {k}: row of site i must follow site i")

    def test_rotation_and_translation_invariance(self, loaded: TeacherAdapter) -> None:
        for name, s in self.structures().items():
            base = loaded.embed([s])
            rotated = loaded.embed([_rotated(s)])
            shifted = loaded.embed([Structure(s.lattice, s.species, s.frac_coords + np.array([0.13, 0.41, 0.77]))])
            for k in range(len(base.layers)):
                self._close(rotated.layers[k], base.layers[k], f"{name} layer {k}, rotated")
                self._close(shifted.layers[k], base.layers[k], f"{name} layer {k}, translated")

    def test_weights_unchanged_after_use(self, loaded: TeacherAdapter) -> None:
        before = loaded.weights_fingerprint()
        loaded.embed(list(self.structures().values()))
        assert loaded.weights_fingerprint() == before, "embedding changed the teacher's weights or buffers"

    # ---- through the cache -----------------------------------------------------------------------

    def test_embedding_cache_and_bad_structures(self, loaded: TeacherAdapter, tmp_path) -> None:
        from crysdistill.distill.cache import check_records, embed_records

        records = [Record(name, s, origin=f"fixture:{name}") for name, s in self.structures().items()]
        first = embed_records(loaded, records, [0, -1], cache_dir=tmp_path)
        second = embed_records(loaded, records, [0, -1], cache_dir=tmp_path)
        assert first.n_computed == len(records) and second.n_computed == 0
        assert first.dim == loaded.layer_widths[0] + loaded.layer_widths[-1]
        for key in first.keys:
            a, b = first.store.get(key), second.store.get(key)
            assert np.array_equal(a["node"], b["node"]) and np.allclose(a["graph"], a["node"].mean(0), atol=1e-6)
        isolated = Record("lonely", Structure(Lattice.cubic(40.0), ["Cu"], [[0, 0, 0]]), origin="lonely.cif")
        reason = loaded.check(isolated.structure)
        if reason is None:  # the teacher can embed an isolated atom: it must then do so
            assert loaded.embed([isolated.structure]).ptr.tolist() == [0, 1]
        else:
            with pytest.raises(RecordError) as info:
                check_records(loaded, [isolated])
            msg = str(info.value)
            assert "lonely.cif" in msg and loaded.name in msg and "\n" not in msg, msg
            ok, problems = check_records(loaded, records + [isolated], on_error="skip")
            assert len(ok) == len(records) and len(problems) == 1
