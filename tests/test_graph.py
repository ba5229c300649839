"""The crystal graph: golden neighbour shells, edge direction, periodic images, a brute-force
reference neighbour search, Gaussians, element coverage and symmetry labels."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import (
    CrystalGraphFeaturizer,
    GraphSettings,
    check_elements,
    gaussian_expansion,
    neighbor_list,
)
from crysdistill.data.readers import read_dataset
from crysdistill.data.symmetry import CRYSTAL_SYSTEMS, UNKNOWN, crystal_system_index, space_group_number
from crysdistill.errors import ConfigError, RecordError

NACL_A = 5.64
CU_A = 3.615
FAST = GraphSettings(symmetry=False)


def edges_of(g: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours ``j``, images and distances of centre ``i`` (row 1 of ``edge_index`` is the centre)."""
    m = g["edge_index"][1] == i
    return g["edge_index"][0][m], g["image"][m], g["distance"][m]


def reference_neighbors(structure: Structure, cutoff: float = 8.0, k: int = 12) -> list[list[tuple]]:
    """Brute-force reference: ``Structure.get_all_neighbors``, sorted by distance, first ``k``."""
    out = []
    for nbrs in structure.get_all_neighbors(cutoff):
        nbrs = sorted(nbrs, key=lambda n: n.nn_distance)[:k]
        out.append([(n.index, tuple(int(round(x)) for x in n.image), n.nn_distance) for n in nbrs])
    return out


def assert_same_neighbors(g: dict[str, np.ndarray], ref: list[list[tuple]], tol: float = 1e-4) -> None:
    """Tie-robust equality: per atom the same sorted distances, and the same ``(j, image)`` set
    among the neighbours strictly closer than the last kept distance (ties at the boundary may be
    broken differently without changing the graph's geometry)."""
    assert len(g["z"]) == len(ref)
    for i, r in enumerate(ref):
        j, image, dist = edges_of(g, i)
        rd = np.array([x[2] for x in r])
        np.testing.assert_allclose(np.sort(dist), rd, atol=tol, err_msg=f"atom {i}")
        last = rd[-1]
        ours = {(int(a), tuple(int(x) for x in b)) for a, b, d in zip(j, image, dist) if d < last - tol}
        theirs = {(a, b) for a, b, d in r if d < last - tol}
        assert ours == theirs, f"atom {i}"


def assert_geometry(structure: Structure, g: dict[str, np.ndarray], tol: float = 1e-4) -> None:
    """Every edge length equals |cart[j] + image @ lattice − cart[i]|."""
    j, i = g["edge_index"]
    vec = structure.cart_coords[j] + g["image"] @ structure.lattice.matrix - structure.cart_coords[i]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), g["distance"], atol=tol)


# --------------------------------------------------------------------------------------------
# golden graphs


def test_nacl_golden(nacl):
    g = CrystalGraphFeaturizer().featurize(nacl)
    assert g["z"].tolist() == [11] * 4 + [17] * 4  # node k is site k
    np.testing.assert_allclose(g["cart"], nacl.cart_coords, atol=1e-5)
    np.testing.assert_allclose(g["lattice"], nacl.lattice.matrix, atol=1e-5)
    assert np.bincount(g["edge_index"][1]).tolist() == [12] * 8
    for i in range(8):
        j, _, d = edges_of(g, i)
        # 6 nearest unlike ions at a/2, then 6 of the 12 like ions at a/√2 (a tie, any 6 of 12)
        np.testing.assert_allclose(np.sort(d), [NACL_A / 2] * 6 + [NACL_A / math.sqrt(2)] * 6, atol=1e-5)
        first = j[np.argsort(d, kind="stable")[:6]]
        assert {int(g["z"][x]) for x in first} == ({17} if i < 4 else {11})
    assert_geometry(nacl, g)


def test_cu_primitive_golden(cu_primitive):
    """One atom: all 12 neighbours are the atom itself, through 12 different periodic images."""
    g = CrystalGraphFeaturizer().featurize(cu_primitive)
    assert g["z"].tolist() == [29]
    assert g["edge_index"].shape == (2, 12)
    assert (g["edge_index"] == 0).all()
    np.testing.assert_allclose(g["distance"], CU_A / math.sqrt(2), atol=1e-5)
    images = {tuple(int(x) for x in im) for im in g["image"]}
    e = np.eye(3, dtype=int)
    expected = {tuple(s * v) for s in (1, -1) for v in (e[0], e[1], e[2], e[0] - e[1], e[0] - e[2], e[1] - e[2])}
    assert images == expected
    assert_geometry(cu_primitive, g)


def test_repeated_images_of_one_neighbor():
    """A small cell: the same neighbour appears several times, each through another image."""
    s = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    g = CrystalGraphFeaturizer(FAST).featurize(s)
    j, image, d = edges_of(g, 0)
    assert len(j) == 12
    assert Counter(j.tolist()) == {1: 8, 0: 4}  # 8 Cl, then 4 of the 6 Na images at a (a tie)
    assert len({tuple(x) for x in image[j == 1]}) == 8  # 8 Cl images at √3·a/2, all distinct
    np.testing.assert_allclose(np.sort(d)[:8], 3.0 * math.sqrt(3) / 2, atol=1e-5)
    assert_geometry(s, g)


def test_edge_direction_row0_neighbor_row1_center(triclinic):
    """In a P1 cell "j among i's 12 nearest" is not symmetric, so the rows are distinguishable."""
    g = CrystalGraphFeaturizer(FAST).featurize(triclinic)
    ref = reference_neighbors(triclinic)
    pairs = Counter(zip(g["edge_index"][0].tolist(), g["edge_index"][1].tolist()))
    assert any(pairs[(a, b)] != pairs[(b, a)] for a, b in pairs), "fixture must be asymmetric"
    for i, r in enumerate(ref):
        j, _, _ = edges_of(g, i)
        assert Counter(j.tolist()) == Counter(x[0] for x in r)
    assert_same_neighbors(g, ref)
    assert np.all(np.diff(g["edge_index"][1]) >= 0)  # grouped by centre
    for i in range(len(triclinic)):
        assert np.all(np.diff(edges_of(g, i)[2]) >= 0)  # nearest first


def test_against_brute_force_reference(small_structures, sample_path):
    structures = small_structures + [r.structure for r in read_dataset(sample_path, limit=25).records]
    featurizer = CrystalGraphFeaturizer(FAST)
    for s in structures:
        g = featurizer.featurize(s)
        assert_same_neighbors(g, reference_neighbors(s))
        assert_geometry(s, g)


def test_coordinates_outside_the_cell(triclinic):
    """Sites given outside [0, 1) keep their node order and still give consistent images."""
    moved = Structure(triclinic.lattice, triclinic.species, triclinic.frac_coords + [[1, -2, 0], [0, 0, 3],
                                                                                       [-1, 0, 0], [2, 1, -1]])
    g = CrystalGraphFeaturizer(FAST).featurize(moved)
    assert_geometry(moved, g)
    np.testing.assert_allclose(np.sort(g["distance"]),
                               np.sort(CrystalGraphFeaturizer(FAST).featurize(triclinic)["distance"]), atol=1e-5)


def full_sort_reference(lattice: np.ndarray, cart: np.ndarray, cutoff: float, k: int) -> tuple:
    """The plain algorithm: all pairs within the cutoff, stably sorted by (centre, distance), first k."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    c, n, im, d = find_points_in_spheres(cart, cart, r=cutoff, pbc=np.ones(3, dtype=np.int64), lattice=lattice,
                                         tol=1e-8)
    keep = ~((c == n) & (d <= 1e-8))
    c, n, im, d = c[keep], n[keep], im[keep], d[keep]
    order = np.lexsort((d, c))
    c, n, im, d = c[order], n[order], im[order], d[order]
    rank = np.concatenate([np.arange(x) for x in np.bincount(c, minlength=len(cart))]).astype(int)
    sel = rank < k
    return c[sel], n[sel], im[sel], d[sel]


def test_neighbor_list_equals_full_sort_exactly(small_structures):
    """The partition shortcut must not change a single edge, ties included."""
    mixed = Structure(Lattice.cubic(9.0), ["Cu"] * 5, [[0, 0, 0], [0.25, 0, 0], [0, 0.25, 0], [0, 0, 0.25],
                                                       [0.6, 0.6, 0.6]])  # some atoms with < 12 neighbours
    for s in [*small_structures, mixed]:
        lattice = np.ascontiguousarray(s.lattice.matrix)
        cart = np.ascontiguousarray(s.cart_coords)
        for cutoff, k in ((8.0, 12), (3.0, 12), (8.0, 1), (5.0, 40), (2.4, 3)):
            ours = neighbor_list(lattice, cart, cutoff, k)
            ref = full_sort_reference(lattice, cart, cutoff, k)
            for a, b in zip(ours, ref):
                np.testing.assert_array_equal(a, b)


def test_neighbor_list_settings(nacl):
    lattice, cart = nacl.lattice.matrix, nacl.cart_coords
    c, n, im, d = neighbor_list(lattice, cart, 8.0, 6)
    assert np.bincount(c).tolist() == [6] * 8
    np.testing.assert_allclose(d, NACL_A / 2)
    c, n, im, d = neighbor_list(lattice, cart, 3.0, 12)  # cutoff below the second shell
    assert np.bincount(c).tolist() == [6] * 8
    assert c.dtype.kind == "i" and im.shape == (48, 3) and d.shape == (48,)


def test_output_arrays_and_determinism(triclinic):
    f = CrystalGraphFeaturizer()
    a, b = f.featurize(triclinic), f.featurize(triclinic.copy())
    dtypes = {"z": np.int16, "edge_index": np.int32, "distance": np.float32, "image": np.int8,
              "cart": np.float32, "lattice": np.float32, "spg": np.int16, "crystal_system": np.int8}
    assert {k: v.dtype for k, v in a.items()} == {k: np.dtype(v) for k, v in dtypes.items()}
    n, e = len(triclinic), a["distance"].shape[0]
    assert a["edge_index"].shape == (2, e) and a["image"].shape == (e, 3) and a["cart"].shape == (n, 3)
    assert a["lattice"].shape == (3, 3) and a["spg"].shape == (1,) and a["crystal_system"].shape == (1,)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# --------------------------------------------------------------------------------------------
# Gaussians and settings


def test_gaussians_41_centres_0_to_8():
    s = GraphSettings()
    assert s.n_gaussians == 41
    d = torch.tensor([0.0, 2.0, 3.1, 8.0], dtype=torch.float64)
    g = gaussian_expansion(d, s)
    assert g.shape == (4, 41)
    assert g.argmax(dim=1).tolist() == [0, 10, 15, 40]  # 3.1 lies between 3.0 and 3.2: nearer 3.0 by a hair
    centers = np.arange(41) * 0.2
    expected = np.exp(-((d.numpy()[:, None] - centers) ** 2) / 0.2**2)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-12)
    assert g[1, 10].item() == pytest.approx(1.0)
    assert g[1, 11].item() == pytest.approx(math.exp(-1))


def test_graph_settings_validation():
    assert GraphSettings().atom_feature_dim == 92
    assert GraphSettings(cutoff=6.0, gaussian_step=0.5).n_gaussians == 13
    with pytest.raises(ConfigError, match="cutoff"):
        GraphSettings(cutoff=0)
    with pytest.raises(ConfigError, match=r"unknown graph setting\(s\) \['cutof'\]; valid: .*'cutoff'"):
        GraphSettings.from_dict({"cutof": 6})
    assert GraphSettings.from_dict(GraphSettings(cutoff=6).to_dict()) == GraphSettings(cutoff=6)


def test_fingerprint_depends_on_settings_only():
    a, b = CrystalGraphFeaturizer(), CrystalGraphFeaturizer(GraphSettings())
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() == CrystalGraphFeaturizer(GraphSettings(cutoff=8, symprec=0.01)).fingerprint()
    assert a.fingerprint() != CrystalGraphFeaturizer(GraphSettings(cutoff=6)).fingerprint()
    assert a.fingerprint() != CrystalGraphFeaturizer(FAST).fingerprint()
    assert len(a.fingerprint()) == 16


# --------------------------------------------------------------------------------------------
# elements and unrepresentable structures


def test_atom_feature_table_covers_z_1_to_100():
    table, known = atom_feature_table("cgcnn")
    assert table.shape == (119, 92)
    assert known[1:101].all() and not known[0] and not known[101:].any()
    assert set(np.unique(table[1:101])) <= {0.0, 1.0}
    check_elements(np.arange(1, 101), "cgcnn", "all")


@pytest.mark.parametrize("element", ["Og", "Md"])
def test_element_outside_feature_table(element):
    s = Structure(Lattice.cubic(4.0), [element, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(RecordError) as info:
        CrystalGraphFeaturizer(FAST).featurize(s, "data.jsonl:3 (x-1)")
    msg = str(info.value)
    assert msg.startswith("data.jsonl:3 (x-1): ")
    assert f"element(s) {element} outside the 'cgcnn' atom feature table (Z 1–100)" in msg
    assert "remove structures with these elements" in msg


def test_atom_without_neighbor_in_cutoff():
    s = Structure(Lattice.cubic(7.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 6.06 Å apart
    with pytest.raises(RecordError, match=r"^big: atom 0 \(Na\) has no neighbour within 3\.0 Å; increase the "
                                          r"graph cutoff or remove this structure$"):
        CrystalGraphFeaturizer(GraphSettings(cutoff=3, symmetry=False)).featurize(s, "big")
    assert CrystalGraphFeaturizer(FAST).featurize(s)["edge_index"].shape[1] == 2 * 12


# --------------------------------------------------------------------------------------------
# symmetry labels


def test_symmetry_labels(nacl, triclinic, cu_primitive):
    f = CrystalGraphFeaturizer()
    g = f.featurize(nacl)
    assert (int(g["spg"][0]), CRYSTAL_SYSTEMS[int(g["crystal_system"][0])]) == (225, "cubic")
    assert int(f.featurize(cu_primitive)["spg"][0]) == 225
    g = f.featurize(triclinic)
    assert int(g["spg"][0]) in (1, 2) and CRYSTAL_SYSTEMS[int(g["crystal_system"][0])] == "triclinic"
    g = CrystalGraphFeaturizer(FAST).featurize(nacl)
    assert (int(g["spg"][0]), int(g["crystal_system"][0])) == (UNKNOWN, UNKNOWN)


def spglib_failure() -> tuple[Structure, GraphSettings]:
    """Two like atoms 0.52 Å apart (a valid record) with symprec 0.6 Å: spglib finds no symmetry."""
    s = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.13, 0, 0]])
    return s, GraphSettings(symprec=0.6)


def test_spglib_failure_is_unknown():
    s, settings = spglib_failure()
    assert space_group_number(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers),
                              settings.symprec, settings.angle_tolerance) == UNKNOWN
    g = CrystalGraphFeaturizer(settings).featurize(s)
    assert (int(g["spg"][0]), int(g["crystal_system"][0])) == (UNKNOWN, UNKNOWN)
    assert g["edge_index"].shape[1] == 24  # the graph itself is fine


def test_crystal_system_boundaries():
    cases = {1: 0, 2: 0, 3: 1, 15: 1, 16: 2, 74: 2, 75: 3, 142: 3, 143: 4, 167: 4, 168: 5, 194: 5, 195: 6,
             230: 6, 0: UNKNOWN, 231: UNKNOWN, -1: UNKNOWN}
    assert {n: crystal_system_index(n) for n in cases} == cases
