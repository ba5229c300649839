"""The built-in teachers (the real packages and their shipped weights): conformance, and the
behaviour specific to each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crysdistill.errors import UserError
from crysdistill.teachers.registry import list_teachers, load_teacher, split_spec
from crysdistill.testing import TeacherConformance, fixture_structures

TIES = ("CGCNN's graph keeps the 12 nearest neighbours; where the 12th and 13th are equally far (Ti in "
        "SrTiO3: 6 O, then 8 Sr; Cs in CsCl: 8 Cl, then 6 Cs) float noise of a rotation decides which are kept, "
        "so the CrysGNN teachers (and CGCNN-family students) are not exactly rotation-invariant on such cells")


class TestCrysGNNTeacher(TeacherConformance):
    teacher = "crysgnn"  # CrysGNN as published (no bond orientations)

    @pytest.mark.xfail(strict=True, reason=TIES)
    def test_rotation_and_translation_invariance(self, loaded):
        super().test_rotation_and_translation_invariance(loaded)


class TestCrysGNNDefaultTeacher(TeacherConformance):
    """The shipped ``default`` teacher reads bond-orientation order parameters q_l, which are the
    square root of a sum that is exactly 0 for odd l in a centrosymmetric environment (fcc Cu):
    float32 noise of 1e-8 there becomes 1e-4 after the root and about 5e-3 after the BatchNorms of
    two convolutions. Invariant in exact arithmetic, so the tolerance is wider here."""

    teacher = "crysgnn"
    variant = "default"
    atol = rtol = 1e-2

    @pytest.mark.xfail(strict=True, reason=TIES)
    def test_rotation_and_translation_invariance(self, loaded):
        super().test_rotation_and_translation_invariance(loaded)


def test_crysgnn_teacher_is_invariant_where_no_neighbour_shell_is_cut():
    """Away from tied shells (rocksalt NaCl: 6 + 12 neighbours; monoclinic ZrO2) the CrysGNN teacher
    is invariant to rotation and translation like any other."""
    from crysdistill.testing.teachers import _rotated

    t = load_teacher("crysgnn")
    for name in ("NaCl_rocksalt", "ZrO2_monoclinic"):
        s = fixture_structures()[name]
        base, rot = t.embed([s]), t.embed([_rotated(s)])
        for x, y in zip(base.layers, rot.layers):
            assert torch.allclose(x, y, atol=5e-4, rtol=5e-4), name


class TestCHGNetTeacher(TeacherConformance):
    teacher = "chgnet"


class TestSevenNetTeacher(TeacherConformance):
    teacher = "sevennet"


def test_specs_resolve_to_plugins_and_variants(teacher_path):
    assert split_spec("chgnet") == ("chgnet", None)
    assert split_spec("chgnet:0.2.0") == ("chgnet", "0.2.0")
    assert split_spec("sevennet:7net-l3i5") == ("sevennet", "7net-l3i5")
    assert split_spec("default") == ("crysgnn", "default")
    assert split_spec("mp-eform") == ("crysgnn", "mp-eform")
    assert split_spec(str(teacher_path)) == ("crysgnn", str(teacher_path))
    with pytest.raises(UserError, match="unknown teacher 'frobnicate'.*chgnet"):
        split_spec("frobnicate")
    with pytest.raises(UserError, match="available: 0.3.0"):
        load_teacher("chgnet:9.9.9")
    with pytest.raises(UserError, match="download at run time"):
        load_teacher("sevennet:7net-omat")


def test_builtin_teachers_are_listed_from_their_entry_points():
    infos = {i.name: i for i in list_teachers()}
    assert {"crysgnn", "chgnet", "sevennet"} <= set(infos)
    assert all(infos[n].error is None for n in ("crysgnn", "chgnet", "sevennet"))
    assert infos["chgnet"].value == "crysdistill_adapters.teachers.chgnet:CHGNetTeacher"


def test_crysgnn_plugin_matches_the_checkpoint_encoder():
    """The plugin's layers are the encoder's own, and its fingerprint the checkpoint's (so embeddings
    cached and students injected before teachers were plugins still point at the same teacher)."""
    from crysdistill.data.batch import collate
    from crysdistill.teacher.checkpoint import load_teacher as load_checkpoint

    plugin, raw = load_teacher("default"), load_checkpoint("default")
    assert plugin.fingerprint == raw.fingerprint and plugin.spec == "crysgnn:default"
    s = fixture_structures()["SrTiO3_perovskite"]
    out = plugin.embed([s])
    batch = collate([raw.featurizer().featurize(s)], raw.graph_settings)
    with torch.no_grad():
        ref = raw.encoder(batch).layers
    for a, b in zip(out.layers, ref):
        assert torch.equal(a, b)


def test_chgnet_layers_are_its_atom_embedding_and_convolutions():
    """Layer 3 is what CHGNet itself returns as ``atom_fea`` (the second-to-last block)."""
    t = load_teacher("chgnet")
    assert t.layer_widths == [64] * 5 and t.layer_names[0] == "atom_embedding"
    s = fixture_structures()["NaCl_rocksalt"]
    ours = t.embed([s]).layers
    with torch.no_grad():
        ref = t.model([t.model.graph_converter(s)], task="e", return_atom_feas=True)["atom_fea"][0]
    assert torch.allclose(ours[3], ref, atol=1e-6)


def test_chgnet_rejects_an_isolated_atom_and_elements_beyond_its_table():
    t = load_teacher("chgnet")
    assert "no neighbour within" in t.check(Structure(Lattice.cubic(15), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert "outside CHGNet's table" in t.check(Structure(Lattice.cubic(4), ["Og"], [[0, 0, 0]]))


def test_sevennet_exposes_only_scalar_channels():
    """The l = 1, 2 channels rotate with the crystal: a low-symmetry structure shows it, and the
    teacher must not pass them on (128 scalars per block, invariant, tested in the conformance)."""
    t = load_teacher("sevennet")
    assert t.layer_widths == [128] * 6
    s = fixture_structures()["ZrO2_monoclinic"]
    import sevenn._keys as KEY

    full = []
    hook = t.model._modules["0_equivariant_gate"].register_forward_hook(
        lambda _m, _i, o: full.append(o[KEY.NODE_FEATURE].clone()))
    try:
        from crysdistill.testing.teachers import _rotated

        t.embed([s])
        t.embed([_rotated(s)])
    finally:
        hook.remove()
    assert full[0].shape[1] > 128  # the gate's output carries vectors and tensors too …
    assert float((full[0][:, 128:] - full[1][:, 128:]).abs().max()) > 1e-3  # … which rotate
    assert torch.allclose(full[0][:, :128], full[1][:, :128], atol=1e-4)  # the scalars do not


def test_training_data_names_the_leaked_labels():
    from crysdistill.teachers.base import leaks

    for name in ("chgnet", "sevennet"):
        t = load_teacher(name)
        assert leaks(t.training, "formation_energy_per_atom") and not leaks(t.training, "band_gap")
    assert leaks(load_teacher("chgnet").training, "total_magnetization")
    assert leaks(load_teacher("mp-eform").training, "formation_energy_per_atom")
    assert not load_teacher("default").training.leaked_targets


def test_teacher_embeddings_differ_between_checkpoints():
    s = [fixture_structures()["SrTiO3_perovskite"]]
    a, b = load_teacher("chgnet").embed(s), load_teacher("chgnet:0.2.0").embed(s)
    assert load_teacher("chgnet").fingerprint != load_teacher("chgnet:0.2.0").fingerprint
    assert not np.allclose(a.layers[-1].numpy(), b.layers[-1].numpy())


def test_random_twin_keeps_the_architecture_but_not_the_weights():
    s = [fixture_structures()["SrTiO3_perovskite"], fixture_structures()["NaCl_rocksalt"]]
    for spec in ("default", "chgnet"):
        teacher = load_teacher(spec)
        before = teacher.weights_fingerprint()
        twin = teacher.random_twin(0)
        assert teacher.weights_fingerprint() == before  # the teacher itself is untouched
        assert twin.fingerprint != teacher.fingerprint and "random twin, seed 0" in twin.spec
        assert twin.fingerprint == teacher.random_twin(0).fingerprint != teacher.random_twin(1).fingerprint
        a, b = teacher.embed(s), twin.embed(s)
        assert [x.shape for x in a.layers] == [x.shape for x in b.layers]
        assert torch.isfinite(b.layers[-1]).all()
        assert not np.allclose(a.layers[-1].numpy(), b.layers[-1].numpy(), atol=1e-3)


def test_parallel_embedding_equals_serial(tmp_path, monkeypatch):
    from crysdistill.cli.common import resolve_data
    from crysdistill.data.readers import read_dataset
    from crysdistill.distill import cache

    records = read_dataset(resolve_data("sample"), limit=40).records
    teacher = load_teacher("default")
    serial = cache.embed_records(teacher, records, [0, -1], cache_dir=tmp_path / "a")
    monkeypatch.setattr(cache, "MIN_PARALLEL", 8)
    done = []
    par = cache.embed_records(teacher, records, [0, -1], cache_dir=tmp_path / "b", workers=2, batch_size=8,
                              progress=lambda d, n: done.append((d, n)))
    assert par.n_computed == len(records) and done[-1] == (len(records), len(records))
    for k in serial.keys:
        np.testing.assert_array_equal(serial.store.get(k)["node"], par.store.get(k)["node"])
