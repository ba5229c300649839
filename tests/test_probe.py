"""The teacher probe: embedding statistics, ridge probe against baselines, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crysdistill.data.cache import build_graphs
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.data.readers import read_dataset
from crysdistill.errors import UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.teacher.probe import (
    check_layers,
    composition_features,
    effective_rank,
    element_r2,
    format_probe,
    mean_pairwise_cosine,
    probe_teacher,
    ridge_probe,
    teacher_graphs,
    untrained_twin,
)

TARGET = "formation_energy_per_atom"
N_SAMPLE = 200  # structures of the bundled sample used here (graphs cached for the session)


@pytest.fixture(scope="module")
def result(teacher: Teacher, sample_teacher_graphs) -> dict:
    return probe_teacher(teacher, sample_teacher_graphs, target=TARGET, seed=0, n_untrained=2)


# ------------------------------------------------------------------------------------------------
# metrics on numbers we know


def test_element_r2_known_values() -> None:
    z = np.array([8, 8, 26, 26, 26, 1])
    per_element = np.eye(3)[[0, 0, 1, 1, 1, 2]] * 2.0  # depends only on the element
    assert element_r2(per_element, z) == pytest.approx(1.0)
    # within-element spread equal to the between-element spread: one half
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    assert element_r2(x, np.array([1, 1, 2, 2])) == pytest.approx(1 - 4 / 104)
    assert np.isnan(element_r2(np.ones((4, 3)), np.array([1, 1, 2, 2])))


def test_cosine_and_rank_known_values() -> None:
    same = np.tile([[1.0, 2.0, 3.0]], (10, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(opposite, n_pairs=100) == pytest.approx(-1.0)
    orthogonal = np.eye(4)
    assert mean_pairwise_cosine(orthogonal) == pytest.approx(0.0)
    assert effective_rank(np.eye(4) - 0.25) == pytest.approx(3.0)
    line = np.outer(np.arange(10.0), [1.0, 2.0])
    assert effective_rank(line) == pytest.approx(1.0)


def test_composition_features() -> None:
    x = composition_features([np.array([8, 8, 26]), np.array([1])])
    assert x.shape == (2, 100 + 2 * 92)
    assert x[0, 7] == pytest.approx(2 / 3) and x[0, 25] == pytest.approx(1 / 3)
    assert x[:, :100].sum(axis=1) == pytest.approx([1.0, 1.0])
    assert np.all(x[1, 100 + 92:] == 0)  # one element: no spread
    assert composition_features([np.array([3])], atom_features=None).shape == (1, 100)


def test_ridge_probe_recovers_linear_target() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.01 * rng.normal(size=300)
    res = ridge_probe(x, y, np.arange(240), np.arange(240, 300))
    assert res["r2"] > 0.999 and res["mae"] < 0.05


# ------------------------------------------------------------------------------------------------
# a real (small) teacher on the bundled sample


def test_layer0_depends_only_on_element(result: dict) -> None:
    rows = result["embedding"]["teacher"]
    assert [r["layer"] for r in rows] == [0, 1, 2]
    # layer 0 is a linear map of the element's feature vector
    assert rows[0]["element_r2"] == pytest.approx(1.0, abs=1e-6)
    assert result["embedding"]["untrained"][0]["element_r2"] == pytest.approx(1.0, abs=1e-6)
    # convolutions mix in the neighbourhood
    for r in rows[1:]:
        assert 0.0 < r["element_r2"] < 0.999
    for name in ("teacher", "untrained"):
        for r in result["embedding"][name]:
            assert -1.0 <= r["mean_cosine"] <= 1.0
            assert 1.0 <= r["effective_rank"] <= 16.0


def test_probe_against_baselines(result: dict) -> None:
    probe = result["probe"]
    rows = probe["rows"]
    assert set(rows) == {"teacher", "untrained", "composition", "mean"}
    assert probe["n_fit"] + probe["n_test"] == probe["n_labelled"] == N_SAMPLE
    # plain composition features carry formation energy
    assert rows["composition"]["mae"] < 0.7 * rows["mean"]["mae"]
    assert rows["composition"]["r2"] > 0.5
    twins = probe["untrained_twins"]
    assert [t["seed"] for t in twins] == [0, 1]
    assert twins[0]["mae"] == rows["untrained"]["mae"] and twins[1]["mae"] != twins[0]["mae"]
    assert isinstance(result["beats_untrained"], bool)
    assert result["beats_untrained"] == all(rows["teacher"]["mae"] < t["mae"] for t in twins)
    assert [r["layer"] for r in probe["per_layer"]["teacher"]] == [0, 1, 2]
    text = format_probe(result)
    assert "element R²" in text and "training mean" in text and "untrained twin (seed 0)" in text
    assert "2 untrained twins (seeds 0…1)" in text
    json.dumps(result)  # JSON-able


def test_probe_is_reproducible_and_uses_the_cache(teacher: Teacher, sample_teacher_graphs, result: dict) -> None:
    again = probe_teacher(teacher, sample_teacher_graphs, target=TARGET, seed=0, n_untrained=2)
    assert again["probe"]["rows"] == result["probe"]["rows"]
    assert again["embedding"] == result["embedding"]


def test_untrained_twin(teacher: Teacher) -> None:
    a, b = untrained_twin(teacher, 0), untrained_twin(teacher, 0)
    assert a.fingerprint == b.fingerprint != teacher.fingerprint
    assert untrained_twin(teacher, 1).fingerprint != a.fingerprint
    assert not a.encoder.training and a.encoder.config == teacher.encoder.config
    state = torch.random.get_rng_state()
    untrained_twin(teacher, 5)
    assert torch.equal(state, torch.random.get_rng_state())  # global random state untouched


def test_statistics_only_without_target(teacher: Teacher, sample_teacher_graphs) -> None:
    res = probe_teacher(teacher, sample_teacher_graphs, layers=[-1], n_untrained=0)
    assert res["probe"] is None and res["beats_untrained"] is None
    assert [r["layer"] for r in res["embedding"]["teacher"]] == [2]
    assert "ridge probe" not in format_probe(res)


# ------------------------------------------------------------------------------------------------
# errors


def test_errors(teacher: Teacher, sample_teacher_graphs, sample_path: Path) -> None:
    with pytest.raises(UserError, match=r"target 'band_gap' not found; labels present: .*formation_energy_per_atom"):
        probe_teacher(teacher, sample_teacher_graphs, target="band_gap")
    with pytest.raises(UserError, match=r"layer 3 does not exist: the teacher has layers 0…2"):
        check_layers(teacher, [0, 3])
    other = build_graphs(read_dataset(sample_path, limit=3).records, CrystalGraphFeaturizer(GraphSettings(cutoff=6.0)))
    with pytest.raises(UserError, match=r"graphs were built with another featuriser than the teacher's"):
        teacher_graphs(teacher, other)
    few = read_dataset(sample_path, limit=8)
    with pytest.raises(UserError, match=r"only 8 structure\(s\) have a numeric 'formation_energy_per_atom'"):
        probe_teacher(teacher, few, target=TARGET)


@pytest.mark.parametrize("extra, message", [
    (["--target", "band_gap"], "target 'band_gap' not found; labels present: "),
    (["--layers", "0,9"], "layer 9 does not exist: the teacher has layers 0…2"),
    (["--layers", "a,b"], "--layers must be comma-separated integers"),
    (["--target", TARGET, "--limit", "5"], "only 5 structure(s) have a numeric"),
])
def test_cli_errors(run_cli, teacher_path: Path,
                    extra: list[str], message: str) -> None:
    code, out, err = run_cli("probe", "--teacher", str(teacher_path), "--data", "sample",
                           "--limit", str(N_SAMPLE), *extra)
    assert code == 2
    assert err.startswith("crysdistill: error: ") and message in err
    assert err.count("\n") == 1  # one line, no traceback


def test_cli_json(run_cli, teacher_path: Path) -> None:
    code, out, err = run_cli("probe", "--teacher", str(teacher_path), "--data", "sample",
                           "--limit", str(N_SAMPLE), "--target", TARGET, "--layers", "0,2", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["layers"] == [0, 2] and res["probe"]["target"] == TARGET
    assert res["data"].endswith("mp_eform_flla2015_sample.jsonl.gz")
