"""The built-in students: the conformance suite plus checks specific to each architecture."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crysdistill.distill.losses import DistillationLoss
from crysdistill.errors import ConfigError
from crysdistill.students.registry import build_student, get_student
from crysdistill.testing import StudentConformance, fixture_structures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one intra-op thread is faster, above all on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL_GAT = {"width": 16, "layers": 2, "heads": 2, "head_width": 16}


class TestCGCNN(StudentConformance):
    student = "cgcnn"
    config = {"width": 16, "layers": 2, "head_width": 32}


class TestGATGNN(StudentConformance):
    student = "gatgnn"
    config = SMALL_GAT


class TestDeeperGATGNN(StudentConformance):
    student = "deepergatgnn"
    config = {**SMALL_GAT, "layers": 3, "groups": 4}


class TestALIGNN(StudentConformance):
    student = "alignn"
    config = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 16,
              "edge_input_features": 16, "triplet_input_features": 8}


# ---- shared helpers ---------------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _graphs(adapter, structures=None):
    structures = list((structures or fixture_structures()).values())
    featurizer = adapter.featurizer()
    return structures, [featurizer.featurize(s) for s in structures]


# ---- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, student", [("cgcnn", "cgcnn"), ("gatgnn", "gatgnn"),
                                           ("deepergatgnn", "deepergatgnn"), ("alignn", "alignn"),
                                           ("alignn-paper", "alignn")])
def test_config_files_name_valid_model_keys(name: str, student: str) -> None:
    model = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    defaults = get_student(student).default_config()
    assert set(model) == set(defaults), f"configs/{name}.yaml: keys differ from {student}'s default_config"
    if name != "alignn-paper":  # the shipped CPU configs are the defaults
        assert model == defaults
    build_student(student, model)


# ---- CGCNN -------------------------------------------------------------------------------------

def test_cgcnn_default_matches_teacher_width_for_the_crysgnn_recipe() -> None:
    """With width 64 the CrysGNN recipe (no projection) applies, and the sizes are the paper's."""
    torch.manual_seed(0)
    adapter = build_student("cgcnn").train()
    assert len(adapter.convs) == 3 and adapter.conv_to_fc.out_features == 128
    structures, graphs = _graphs(adapter)
    teacher, targets = StudentConformance._teacher_targets(structures)
    loss_fn = DistillationLoss(adapter.embedding_dim, teacher.width, node_weight=0.5, projection=False)
    loss, _ = loss_fn(adapter(adapter.collate(graphs)), targets)
    loss.backward()
    assert loss.item() > 0 and adapter.embedding.weight.grad.abs().sum() > 0


# ---- GATGNN ------------------------------------------------------------------------------------

def test_gatgnn_attention_pooling_weights_sum_to_one_per_structure() -> None:
    torch.manual_seed(0)
    adapter = build_student("gatgnn", SMALL_GAT).eval()
    structures, graphs = _graphs(adapter)
    batch = adapter.collate(graphs)
    with torch.no_grad():
        weights = adapter.attention(batch)
    assert weights.shape == (batch.num_nodes,) and (weights > 0).all()
    sums = torch.zeros(len(graphs)).index_add_(0, batch.batch, weights)
    torch.testing.assert_close(sums, torch.ones(len(graphs)))
    # the one-atom cell puts all its weight on its atom; a multi-element cell does not weigh atoms equally
    assert weights[batch.batch == 0].item() == pytest.approx(1.0)
    srtio3 = weights[batch.batch == 3]
    assert srtio3.std() > 0


def test_gatgnn_pooling_reads_composition() -> None:
    """The same atom embeddings pooled under two compositions get different weights."""
    from crysdistill_adapters._common import CompositionAttentionPooling

    torch.manual_seed(0)
    pool = CompositionAttentionPooling(8)
    x = torch.randn(4, 8)
    batch = torch.zeros(4, dtype=torch.long)
    _, w1 = pool(x, torch.tensor([8, 8, 22, 38]), batch, 1)
    _, w2 = pool(x, torch.tensor([8, 8, 22, 56]), batch, 1)
    assert not torch.allclose(w1, w2)


# ---- DeeperGATGNN ------------------------------------------------------------------------------

def test_deepergatgnn_with_20_layers_builds_runs_and_trains() -> None:
    from torch_geometric.nn import DiffGroupNorm

    torch.manual_seed(0)
    adapter = build_student("deepergatgnn", {"layers": 20, "width": 16, "heads": 2, "groups": 4}).train()
    assert len(adapter.convs) == 20
    assert sum(isinstance(m, DiffGroupNorm) for m in adapter.modules()) == 20
    _, graphs = _graphs(adapter)
    out = adapter(adapter.collate(graphs))
    assert torch.isfinite(out.prediction).all() and out.node_embedding.shape[1] == 16
    out.prediction.sum().backward()
    # the residual stream carries the gradient through all 20 layers to the first ones
    assert adapter.node_embedding.weight.grad.abs().sum() > 0
    assert adapter.convs[0].lin_node.weight.grad.abs().sum() > 0


# ---- ALIGNN ------------------------------------------------------------------------------------

ALIGNN_SMALL = TestALIGNN.config


def test_alignn_embeddings_are_atoms_not_line_graph_nodes() -> None:
    torch.manual_seed(0)
    adapter = build_student("alignn", ALIGNN_SMALL, n_targets=1).eval()
    structures, graphs = _graphs(adapter)
    batch = adapter.collate(graphs)
    n_atoms = sum(len(s) for s in structures)
    assert batch.g.num_nodes == n_atoms and batch.lg.num_nodes == batch.g.num_edges > n_atoms
    with torch.no_grad():
        out = adapter(batch)
        direct = adapter.model((batch.g, batch.lg, batch.lattice))["out"]
    assert out.node_embedding.shape == (n_atoms, 16)
    assert out.prediction.shape == (len(structures), 1)
    torch.testing.assert_close(out.prediction[:, 0], direct)
    # the pooled embedding ALIGNN reads is the mean of the atom embeddings we return
    means = torch.zeros(len(structures), 16).index_add_(0, out.node_batch, out.node_embedding)
    means /= torch.bincount(out.node_batch).unsqueeze(1)
    torch.testing.assert_close(out.graph_embedding, means)
    # the hooks live only during forward: no hook left behind, and a deep copy predicts the same
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in adapter.modules())
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(adapter)(batch).prediction, out.prediction)


def test_alignn_graph_conventions() -> None:
    adapter = build_student("alignn", ALIGNN_SMALL)
    featurizer = adapter.featurizer()
    assert featurizer.settings()["cutoff"] == 8.0 and featurizer.settings()["max_neighbors"] == 12
    s = fixture_structures()["ZrO2_monoclinic"]
    g = featurizer.featurize(s)
    lengths = np.linalg.norm(g["r"], axis=1)
    assert (np.bincount(g["src"], minlength=len(s)) == 12).all() and lengths.max() <= 8.0
    # the bond vectors are the periodic displacements src → dst of the structure
    cart = s.cart_coords
    expected = cart[g["dst"]] - cart[g["src"]] + g["images"] @ s.lattice.matrix
    np.testing.assert_allclose(g["r"], expected, atol=1e-4)
    # line-graph edges join bond u→v to bond v→w
    assert (g["dst"][g["lg_src"]] == g["src"][g["lg_dst"]]).all()
    short = build_student("alignn", {**ALIGNN_SMALL, "three_body_cutoff": 3.0}).featurizer().featurize(s)
    assert 0 < len(short["lg_src"]) < len(g["lg_src"])
    assert lengths[short["lg_src"]].max() <= 3.0 and lengths[short["lg_dst"]].max() <= 3.0
    with pytest.raises(ConfigError):
        build_student("alignn", {"three_body_cutoff": 9.0})
