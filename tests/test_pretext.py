"""Pretext tasks: losses finite and decreasing on a tiny batch, exact counts, the pair sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from crysdistill.data.batch import collate
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.errors import ConfigError, UserError
from crysdistill.teacher.encoder import CrysGNNEncoder
from crysdistill.teacher.geometry import edge_lengths, random_displacements
from crysdistill.teacher.pretext.base import PretextTask, build_task, task_options
from crysdistill.teacher.pretext.connectivity import (
    ConnectivityReconstruction,
    PairBilinear,
    neighbour_pairs,
    sample_negative_pairs,
)
from crysdistill.teacher.pretext.crystal_system import CrystalSystemContrastive, supervised_nt_xent
from crysdistill.teacher.pretext.masked_atom import MaskedAtomPrediction
from crysdistill.teacher.pretext.masked_edge import MaskedEdgeDistance
from crysdistill.teacher.pretext.node_features import NodeFeatureReconstruction
from crysdistill.teacher.pretext.perturbation import PerturbationContrast
from crysdistill.teacher.pretext.space_group import SpaceGroupClassification

SETTINGS = GraphSettings()


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny batches gain nothing from more and suffer on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def structures(small_structures: list[Structure]) -> list[Structure]:
    """The shared small structures plus a second P1 cell and a rutile-like tetragonal cell."""
    extra = Structure.from_spacegroup("P4_2/mnm", [[4.59, 0, 0], [0, 4.59, 0], [0, 0, 2.96]], ["Ti", "O"],
                                      [[0, 0, 0], [0.305, 0.305, 0]])
    p1 = small_structures[2].copy()
    p1.perturb(0.05, min_distance=0.01)
    return [*small_structures, extra, p1]


@pytest.fixture
def batch(structures: list[Structure]):
    featurizer = CrystalGraphFeaturizer(SETTINGS)
    return collate([featurizer.featurize(s) for s in structures], SETTINGS)


def overfit(task: PretextTask, batch, steps: int = 25) -> tuple[float, float]:
    """First and last loss of ``steps`` Adam steps of encoder + task on one batch."""
    torch.manual_seed(0)
    encoder = CrysGNNEncoder()
    opt = torch.optim.Adam([*encoder.parameters(), *task.parameters()], lr=5e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(1)  # the same sampled pairs / masks every step
        r = task(batch, encoder(batch), encoder)
        assert torch.isfinite(r.loss)
        opt.zero_grad()
        r.loss.backward()
        opt.step()
        losses.append(float(r.loss.detach()))
    return losses[0], losses[-1]


@pytest.mark.parametrize("cls", [NodeFeatureReconstruction, ConnectivityReconstruction, SpaceGroupClassification,
                                 CrystalSystemContrastive, MaskedAtomPrediction, MaskedEdgeDistance])
def test_loss_finite_and_decreases(cls: type[PretextTask], batch) -> None:
    torch.manual_seed(0)
    first, last = overfit(cls(64, SETTINGS, 0.25), batch)
    assert last < 0.7 * first


@pytest.mark.parametrize("name, options", [("space_group", {"hidden": 32}), ("crystal_system", {"projection": 32})])
def test_optional_heads_learn_and_load(name: str, options: dict, batch) -> None:
    """The non-linear space-group head and the contrastive projection head train, and a heads
    state dict rebuilds through the same spec (as ``teacher eval`` does)."""
    torch.manual_seed(0)
    task = build_task(name, 64, SETTINGS, {"weight": 0.25, "options": options})
    assert sum(p.numel() for p in task.parameters()) > 64 * 32
    first, last = overfit(task, batch)
    assert last < 0.7 * first
    again = build_task(name, 64, SETTINGS, {"weight": 0.25, "options": options})
    again.load_state_dict(task.state_dict())


def test_projection_head_touched_without_labels(batch) -> None:
    """A batch with fewer than two known crystal systems still gives every projection weight a
    (zero) gradient, so data-parallel processes reduce the same parameters."""
    encoder = CrysGNNEncoder()
    task = CrystalSystemContrastive(64, SETTINGS, projection=16)
    cs = batch.crystal_system.clone()
    batch.crystal_system = torch.full_like(cs, -1)
    r = task(batch, encoder(batch), encoder)
    batch.crystal_system = cs
    assert float(r.loss.detach()) == 0.0
    r.loss.backward()
    assert all(p.grad is not None for p in task.parameters())


def test_counts_are_exact(batch) -> None:
    torch.manual_seed(0)
    encoder = CrysGNNEncoder().eval()
    out = encoder(batch)
    nf = NodeFeatureReconstruction(64, SETTINGS)(batch, out, encoder)
    assert float(nf.counts["total"]) == batch.num_nodes * 92
    sg_task = SpaceGroupClassification(64, SETTINGS)
    spg = batch.spg.clone()
    batch.spg[0] = -1  # as for a structure spglib cannot analyse
    sg = sg_task(batch, out, encoder)
    assert float(sg.counts["unknown"]) == 1 and float(sg.counts["total"]) == batch.num_graphs - 1
    assert float(sg.counts["correct"]) <= float(sg.counts["correct5"]) <= float(sg.counts["total"])
    # the unknown structure is left out of the loss
    logits = sg_task.head(out.graph[1:])
    expected = torch.nn.functional.cross_entropy(logits, spg[1:] - 1)
    assert torch.allclose(sg.loss, expected)
    batch.spg = spg


def test_space_group_all_unknown_gives_zero_loss_with_gradient(batch) -> None:
    encoder = CrysGNNEncoder()
    task = SpaceGroupClassification(64, SETTINGS)
    batch.spg = torch.full_like(batch.spg, -1)
    r = task(batch, encoder(batch), encoder)
    assert float(r.loss.detach()) == 0.0 and float(r.counts["total"]) == 0
    r.loss.backward()
    assert task.head.weight.grad is not None


def test_supervised_nt_xent_matches_definition() -> None:
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    y = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 has no positive: not an anchor
    loss, _ = supervised_nt_xent(z, y, 0.5)
    terms = []
    for i in range(6):
        others = [a for a in range(6) if a != i]
        pos = [p for p in others if y[p] == y[i]]
        if not pos:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / 0.5 for a in others]), 0)
        terms.append(-torch.stack([z[i] @ z[p] / 0.5 - denom for p in pos]).mean())
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_pair_bilinear_equals_nn_bilinear() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Bilinear(16, 16, 6)
    fast = PairBilinear(16, 6)
    fast.load_state_dict(ref.state_dict())
    a, b = torch.randn(50, 16), torch.randn(50, 16)
    assert torch.allclose(fast(a, b), ref(a, b), atol=1e-5)


def test_neighbour_pair_labels_match_brute_force(batch) -> None:
    pairs, label = neighbour_pairs(batch.edge_index, int(batch.num_nodes), 5)
    j, i = batch.edge_index.tolist()
    counts = Counter(zip(i, j))
    assert pairs.shape[1] == len(counts)
    for (a, b), c in zip(pairs.T.tolist(), label.tolist()):
        assert c == min(counts[(a, b)], 5) and c >= 1


def test_labels_match_pymatgen_neighbours(triclinic: Structure) -> None:
    """Class of (i, j) = how often j is among i's 12 nearest neighbours within 8 Å (pymatgen, no ties in P1)."""
    g = CrystalGraphFeaturizer(SETTINGS).featurize(triclinic)
    b = collate([g], SETTINGS)
    pairs, label = neighbour_pairs(b.edge_index, int(b.num_nodes), 5)
    got = {tuple(p): c for p, c in zip(pairs.T.tolist(), label.tolist())}
    expected: Counter = Counter()
    for i, neigh in enumerate(triclinic.get_all_neighbors(8.0)):
        for n in sorted(neigh, key=lambda n: n.nn_distance)[:12]:
            expected[(i, n.index)] += 1
    assert got == {k: min(v, 5) for k, v in expected.items()}


def test_negative_sampler_never_hits_a_neighbour_pair(batch) -> None:
    n = int(batch.num_nodes)
    pairs, _ = neighbour_pairs(batch.edge_index, n, 5)
    neighbours = set(map(tuple, pairs.T.tolist()))
    gen = torch.Generator().manual_seed(0)
    neg = sample_negative_pairs(pairs, batch.ptr, batch.batch, n, 5000, generator=gen)
    assert neg.shape[1] > 0
    assert not (set(map(tuple, neg.T.tolist())) & neighbours)
    assert torch.equal(batch.batch[neg[0]], batch.batch[neg[1]])  # partner from the same crystal
    # the one-atom Cu cell: its only pair (0, 0) is a neighbour pair, so it never yields a negative
    cu = int(torch.nonzero(torch.bincount(batch.batch) == 1)[0])
    assert not (batch.batch[neg[0]] == cu).any()


def test_connectivity_task_labels_and_ratio(batch) -> None:
    task = ConnectivityReconstruction(64, SETTINGS, negatives_per_positive=1.0)
    torch.manual_seed(0)
    pairs, labels = task.pairs_and_labels(batch)
    pos, _ = neighbour_pairs(batch.edge_index, int(batch.num_nodes), 5)
    neighbours = set(map(tuple, pos.T.tolist()))
    for p, c in zip(pairs.T.tolist(), labels.tolist()):
        assert (tuple(p) in neighbours) == (c > 0)  # class 0 ⇔ not a neighbour pair
    assert int((labels == 0).sum()) <= pos.shape[1]


def test_negative_ratio_on_a_large_cell(nacl: Structure) -> None:
    """In a 64-atom cell most pairs are not neighbours: the sampler delivers the requested ratio."""
    b = collate([CrystalGraphFeaturizer(SETTINGS).featurize(nacl * (2, 2, 2))], SETTINGS)
    task = ConnectivityReconstruction(64, SETTINGS, negatives_per_positive=1.5)
    torch.manual_seed(0)
    _, labels = task.pairs_and_labels(b)
    n_pos = int((labels > 0).sum())
    assert int((labels == 0).sum()) == round(1.5 * n_pos)


def test_masked_atom_mask_share() -> None:
    g = CrystalGraphFeaturizer(SETTINGS).featurize(
        Structure.from_spacegroup("Fm-3m", [[5.64, 0, 0], [0, 5.64, 0], [0, 0, 5.64]], ["Na", "Cl"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5]]).make_supercell(2))
    b = collate([g, g], SETTINGS)
    task = MaskedAtomPrediction(64, SETTINGS, mask_fraction=0.15)
    torch.manual_seed(0)
    shares = [float(task.mask(b).float().mean()) for _ in range(20)]
    assert 0.1 < np.mean(shares) < 0.22
    assert all(task.mask(b)[b.batch == k].any() for k in range(2))


def test_build_task_from_config() -> None:
    task = build_task("connectivity", 64, SETTINGS, {"weight": 0.5, "options": {"negatives_per_positive": 2}})
    assert isinstance(task, ConnectivityReconstruction) and task.weight == 0.5
    assert task.negatives_per_positive == 2.0
    assert set(task_options(ConnectivityReconstruction)) == {"negatives_per_positive", "negative_weight", "max_count"}
    with pytest.raises(ConfigError, match="did you mean 'negatives_per_positive'"):
        build_task("connectivity", 64, SETTINGS, {"options": {"negatives_per_positve": 2}})
    with pytest.raises(ConfigError, match="takes no options"):
        build_task("node_features", 64, SETTINGS, {"options": {"x": 1}})
    with pytest.raises(ConfigError, match="did you mean 'hidden'"):
        build_task("space_group", 64, SETTINGS, {"options": {"hiden": 128}})
    with pytest.raises(ConfigError, match="projection must be a whole number >= 0.*'abc'"):
        build_task("crystal_system", 64, SETTINGS, {"options": {"projection": "abc"}})
    with pytest.raises(ConfigError, match="hidden must be a whole number >= 0.*-1"):
        build_task("space_group", 64, SETTINGS, {"options": {"hidden": -1}})
    with pytest.raises(ConfigError, match="needs symmetry labels"):
        build_task("space_group", 64, GraphSettings(symmetry=False), {})
    with pytest.raises(UserError, match="unknown pretext task 'spacegroup'; installed: .*space_group"):
        build_task("spacegroup", 64, SETTINGS, {})


def test_edge_lengths_reproduce_the_cached_distances(batch) -> None:
    """Recomputing lengths from the stored images and lattices gives the neighbour search's distances."""
    d = edge_lengths(batch)
    assert torch.allclose(d, batch.distance.to(d.dtype), atol=1e-4)


def test_displacements_have_the_requested_lengths() -> None:
    torch.manual_seed(0)
    v = random_displacements(2000, 0.1, 0.5)
    length = v.norm(dim=1)
    assert float(length.min()) >= 0.1 - 1e-6 and float(length.max()) <= 0.5 + 1e-6
    assert abs(float(v.mean(dim=0).norm())) < 0.02  # no preferred direction


def test_masked_edge_masks_whole_bonds(nacl: Structure) -> None:
    """Both directions of a bond are masked together; the share of masked bonds is about right."""
    b = collate([CrystalGraphFeaturizer(SETTINGS).featurize(nacl * (2, 2, 2))], SETTINGS)
    task = MaskedEdgeDistance(64, SETTINGS, mask_fraction=0.15)
    bond = task.bond_ids(b)
    j, i = b.edge_index
    # an edge j -> i and its reverse i -> j at the same length share the bond id
    key = {(int(a), int(c), round(float(d), 3)): int(k) for a, c, d, k in zip(i, j, b.distance, bond)}
    reverse = [(c, a, d) for (a, c, d) in key]
    assert sum(key[r] == key[f] for f, r in zip(key, reverse) if r in key) == sum(r in key for r in reverse) > 0
    torch.manual_seed(0)
    masks = [task.mask(b) for _ in range(20)]
    for m in masks:
        assert all(bool(m[bond == k].all()) or not bool(m[bond == k].any()) for k in bond.unique())
    share = np.mean([float(torch.unique(bond[m]).numel()) / float(bond.max() + 1) for m in masks])
    assert 0.1 < share < 0.2
    assert int(task.bins(torch.tensor([0.0, 2.81, 8.0, 9.0])).tolist()[1]) == 14
    assert task.bins(torch.tensor([9.0])).item() == SETTINGS.n_gaussians - 1


@pytest.mark.parametrize("kind", ["cosine", "nt_xent"])
def test_perturbation_contrast_loss_falls(kind: str, batch) -> None:
    """Loss falls on a tiny batch; the views are unit vectors, one per crystal."""
    torch.manual_seed(0)
    task = PerturbationContrast(64, SETTINGS, 0.25, loss=kind)
    first, last = overfit(task, batch, steps=30)
    assert np.isfinite(first) and last < first
    torch.manual_seed(5)
    z1 = task.view(batch, CrysGNNEncoder())
    assert z1.shape == (batch.num_graphs, 64) and torch.allclose(z1.norm(dim=1), torch.ones(batch.num_graphs))


def test_perturbation_without_displacement_gives_identical_copies(batch) -> None:
    """With zero displacement both copies are the clean crystal: cosine loss 0, retrieval exact up to duplicates."""
    torch.manual_seed(0)
    encoder = CrysGNNEncoder().eval()
    task = PerturbationContrast(64, SETTINGS, 0.25, min_displacement=0.0, max_displacement=0.0)
    r = task(batch, encoder(batch), encoder)
    assert float(r.loss.detach()) < 1e-5
    with pytest.raises(ValueError, match="min_displacement"):
        PerturbationContrast(64, SETTINGS, min_displacement=0.5, max_displacement=0.1)


def test_bond_orientation_known_lattices() -> None:
    """Steinhardt q_4 and q_6 of fcc and hcp match the literature values (0.191/0.575 and
    0.097/0.485), a primitive and a conventional fcc cell agree, and rotating a crystal changes
    nothing: the values depend on the bond angles only."""
    from pymatgen.core import Lattice

    from crysdistill.teacher.geometry import bond_orientation

    fcc = Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    hcp = Structure(Lattice.hexagonal(2.5, 2.5 * 1.633), ["Mg"] * 2, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    rutile = Structure.from_spacegroup("P4_2/mnm", [[4.59, 0, 0], [0, 4.59, 0], [0, 0, 2.96]], ["Ti", "O"],
                                       [[0, 0, 0], [0.305, 0.305, 0]])
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)).double())[0].numpy()
    rotated = Structure(rutile.lattice.matrix @ rotation.T, rutile.species, rutile.frac_coords)
    featurizer = CrystalGraphFeaturizer(SETTINGS)
    cells = [fcc, fcc.get_primitive_structure(), hcp, rutile, rotated]
    q = bond_orientation(collate([featurizer.featurize(s) for s in cells], SETTINGS), 6)
    assert q.shape == (4 + 1 + 2 + 6 + 6, 12)
    first_shell = q[:, :6]  # the small weighting scale: q_1 … q_6
    assert torch.allclose(first_shell[0, [3, 5]], torch.tensor([0.191, 0.575]), atol=1e-3)
    assert torch.allclose(first_shell[5, [3, 5]], torch.tensor([0.097, 0.485]), atol=2e-3)
    assert torch.allclose(q[:4], q[4].expand(4, -1), atol=1e-3)  # conventional = primitive
    assert torch.allclose(q[7:13], q[13:19], atol=1e-3)  # rotated rutile = rutile
    assert not torch.allclose(q[7], q[0], atol=0.05)  # a TiO6 octahedron is not a Cu12 cuboctahedron
    assert ((q >= 0) & (q <= 1 + 1e-6)).all()


def test_masked_bonds_are_left_out_of_the_bond_angles(batch) -> None:
    """With bond angles on, the masked-edge pass computes them without the masked bonds (as if
    those edges were not in the graph), so their lengths and directions do not leak to the atoms."""
    from crysdistill.teacher.encoder import EncoderConfig
    from crysdistill.teacher.geometry import bond_orientation

    torch.manual_seed(0)
    encoder = CrysGNNEncoder(EncoderConfig(angular_orders=4))
    task = MaskedEdgeDistance(64, SETTINGS, mask_fraction=0.3)
    hidden = task.mask(batch)
    task.mask = lambda b: hidden
    seen = []
    encoder.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    task(batch, encoder(batch), encoder)
    angles = seen[-1][:, 92:]
    keep = ~hidden
    pruned = batch.clone()
    pruned.edge_index, pruned.image = batch.edge_index[:, keep], batch.image[keep]
    assert torch.allclose(angles, bond_orientation(pruned, 4), atol=1e-6)
    assert torch.allclose(angles, bond_orientation(batch, 4, hidden=hidden), atol=1e-6)
    assert not torch.allclose(angles, bond_orientation(batch, 4), atol=1e-3)  # the leak this closes


def test_encoder_with_bond_orientation_learns_and_reloads(tmp_path, batch) -> None:
    """``encoder.angular_orders`` widens the atom input, trains with a pretext task, survives a
    teacher checkpoint round trip, and the perturbation task feeds it the displaced positions."""
    from crysdistill.teacher.checkpoint import load_teacher, save_teacher
    from crysdistill.teacher.encoder import EncoderConfig

    torch.manual_seed(0)
    encoder = CrysGNNEncoder(EncoderConfig(angular_orders=4))
    assert encoder.embedding.in_features == 92 + 8
    task = SpaceGroupClassification(64, SETTINGS)
    opt = torch.optim.Adam([*encoder.parameters(), *task.parameters()], lr=5e-3)
    losses = []
    for _ in range(25):
        r = task(batch, encoder(batch), encoder)
        opt.zero_grad()
        r.loss.backward()
        opt.step()
        losses.append(float(r.loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    save_teacher(tmp_path / "t.pt", encoder, SETTINGS)
    teacher = load_teacher(tmp_path / "t.pt")
    encoder.eval()
    assert torch.allclose(teacher.encoder(batch).node, encoder(batch).node, atol=1e-6)
    moved = batch.cart + 0.3 * torch.randn_like(batch.cart)
    assert not torch.allclose(encoder(batch, cart=moved).node, encoder(batch).node, atol=1e-4)
    with pytest.raises(ValueError, match="angular_orders"):
        EncoderConfig(angular_orders=-1)


def test_property_regression_learns_and_counts_exactly(batch) -> None:
    """The supervised task reads ``batch.label_<key>``, leaves structures without the label out of
    its loss and counts, and learns the label on one batch."""
    from crysdistill.data.batch import label_attribute
    from crysdistill.teacher.pretext.property import PropertyRegression

    y = torch.linspace(-2.0, 1.0, batch.num_graphs)
    y[1] = float("nan")  # a record without the label
    setattr(batch, label_attribute("formation_energy_per_atom"), y)
    torch.manual_seed(0)  # the head's initial weights, whatever ran before
    task = build_task("property", 64, SETTINGS, {"weight": 1.0, "options": {
        "label": "formation_energy_per_atom", "shift": -0.5, "scale": 1.0, "hidden": 32}})
    assert isinstance(task, PropertyRegression) and task.label_keys == ("formation_energy_per_atom",)
    encoder = CrysGNNEncoder().eval()
    out = encoder(batch)
    r = task(batch, out, encoder)
    known = ~torch.isnan(y)
    pred = task.predict(out)
    assert float(r.counts["total"]) == batch.num_graphs - 1 and float(r.counts["unknown"]) == 1
    assert torch.allclose(r.counts["abs_error"], (pred - y)[known].abs().sum().double(), atol=1e-5)
    first, last = overfit(task, batch, steps=40)
    assert last < 0.5 * first, (first, last)


def test_property_regression_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="options.label"):
        build_task("property", 64, SETTINGS, {"weight": 1.0})
    with pytest.raises(ConfigError, match="scale must be a number > 0"):
        build_task("property", 64, SETTINGS, {"options": {"label": "band_gap", "scale": 0}})
