"""Training, predicting and the head reference with the foundation teachers (real packages and weights)."""

from __future__ import annotations

import csv
import gzip
import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crysdistill.cli import main

SMALL = ["--train-size", "40", "--val-size", "20", "--test-size", "20", "--epochs", "2", "--seed", "0",
         "model.width=16", "model.layers=2"]


@pytest.mark.slow
@pytest.mark.parametrize("teacher,layers", [("chgnet", "[0,1,2,3,4]"), ("sevennet", "[0,1,2,3,4,5]")])
def test_injection_from_a_foundation_teacher_trains_and_predicts(tmp_path, capsys, teacher, layers):
    out = tmp_path / "run"
    assert main(["train", "--student", "cgcnn", "--teacher", teacher, "--data", "sample", "--target", "e_above_hull",
                 *SMALL, "--out", str(out), "distill.node_weight=0", f"distill.inject_layers={layers}",
                 "--limit", "100"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["teacher"] == teacher and s["inject_layers"] == json.loads(layers) and math.isfinite(s["test_mae"])
    assert "MPtrj" in s["teacher_trained_on"]["dataset"] and s["teacher_leaks_target"] is True
    assert f"with {teacher}'s layers" in capsys.readouterr().out
    # predict embeds new structures with the same teacher and reproduces the test predictions
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--data", "sample", "--limit", "100",
                 "-o", str(tmp_path / "p.csv")]) == 0
    ours = {r["id"]: float(r["e_above_hull_prediction"]) for r in csv.DictReader(open(tmp_path / "p.csv"))}
    for r in csv.DictReader(open(out / "predictions_test.csv")):
        assert ours[r["id"]] == pytest.approx(float(r["e_above_hull_prediction"]), abs=1e-4)


def test_leaked_target_is_warned_about_once(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    assert main(["train", "--student", "cgcnn", "--teacher", "chgnet", "--data", "sample", "--target",
                 "formation_energy_per_atom", *SMALL, "--limit", "80", "--out", str(tmp_path / "r")]) == 0
    warnings = [r.getMessage() for r in caplog.records if "gives away the target" in r.getMessage()]
    assert len(warnings) == 1 and "chgnet" in warnings[0] and "MPtrj" in warnings[0]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["teacher_leaks_target"] is True and s["distill_weight"] == pytest.approx(0.1)


def _with_bad_record(tmp_path):
    """The sample's first 60 records plus one CHGNet cannot embed (an atom with no neighbour within 6 Å)."""
    from crysdistill.cli.common import sample_path

    rows = [json.loads(line) for line in gzip.open(sample_path(), "rt")][:60]
    lonely = Structure(Lattice.cubic(7.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 6.06 Å apart
    rows.append({"id": "lonely-1", "structure": lonely.as_dict(), "formation_energy_per_atom": -1.0})
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_a_structure_the_teacher_cannot_embed_is_named_or_skipped(tmp_path, capsys):
    data = _with_bad_record(tmp_path)
    args = ["train", "--student", "cgcnn", "--teacher", "chgnet", "--data", str(data), "--target",
            "formation_energy_per_atom", "--train-size", "30", "--val-size", "15", "--test-size", "15", "--epochs", "1",
            "distill.node_weight=0", "distill.inject_layers=[4]"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lonely-1" in err and "teacher chgnet cannot embed it" in err
    assert "no neighbour within CHGNet's 6 Å cutoff" in err and "--on-error skip" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["n_skipped"] == 1


def test_head_reference_on_train_splits(tmp_path, capsys):
    """The head sees the structures `train` would, split the same way; it beats the training mean."""
    out = tmp_path / "h"
    assert main(["head", "--teacher", "chgnet", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--train-size", "150", "--val-size", "50", "--test-size", "100", "--out", str(out), "-o",
                 str(tmp_path / "pred.csv")]) == 0
    res = json.loads((out / "summary.json").read_text())
    assert res["n_train"] == 150 and res["n_test"] == 100 and res["layers"] == [0, 1, 2, 3, 4] and res["dim"] == 320
    assert res["test_mae"] < 0.5 * res["mean_test_mae"]
    assert res["chosen"] in res["candidates"] and res["val_mae"] == min(res["candidates"].values())
    assert res["teacher_leaks_target"] is True
    # the same structures as `train` with the same sizes and seed
    assert main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--train-size", "150", "--val-size", "50", "--test-size", "100", "--epochs", "1",
                 "--out", str(tmp_path / "t")]) == 0
    split = json.loads((tmp_path / "t" / "splits.json").read_text())
    assert [r["id"] for r in csv.DictReader(open(tmp_path / "pred.csv"))] == split["test"]
    capsys.readouterr()
    assert main(["head", "--features", "composition", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--train-size", "150", "--val-size", "50", "--test-size", "100", "--json"]) == 0
    comp = json.loads(capsys.readouterr().out)
    assert comp["teacher"] is None and np.isfinite(comp["test_mae"]) and comp["test_mae"] > res["test_mae"]
    # head.pt predicts through `crysdistill predict`: the same numbers as the head's own test predictions
    assert main(["predict", "--checkpoint", str(out / "head.pt"), "--data", "sample", "-o",
                 str(tmp_path / "again.csv")]) == 0
    assert "predicted 400 structure(s), MAE formation_energy_per_atom" in capsys.readouterr().out  # the whole sample
    again = {r["id"]: float(r["formation_energy_per_atom_prediction"]) for r in csv.DictReader(open(tmp_path / "again.csv"))}
    first = {r["id"]: float(r["prediction"]) for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    assert np.allclose([again[i] for i in first], list(first.values()), atol=1e-4)


def test_krr_and_probe_with_a_foundation_teacher(capsys):
    assert main(["krr", "--teacher", "sevennet", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--train-size", "150", "--limit", "250", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["layers"] == [0, 1, 2, 3, 4, 5] and res["dim"] == 768 and res["teacher"].startswith("sevennet")
    assert res["test_mae"] < 0.5 * res["mean_test_mae"]
    assert main(["krr", "--teacher", "sevennet", "--features", "untrained", "--data", "sample", "--target",
                 "formation_energy_per_atom", "--train-size", "150", "--limit", "250", "--json"]) == 0
    twin = json.loads(capsys.readouterr().out)
    assert "random twin" in twin["teacher"] and twin["test_mae"] > res["test_mae"]
    assert main(["probe", "--teacher", "chgnet", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--limit", "120", "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert probe["layers"] == [0, 1, 2, 3, 4] and len(probe["embedding"]["untrained"]) == 5
    rows = probe["probe"]["rows"]
    assert rows["teacher"]["mae"] < rows["untrained"]["mae"] and rows["teacher"]["mae"] < rows["mean"]["mae"]
    assert probe["embedding"]["teacher"][0]["element_r2"] == pytest.approx(1.0)  # layer 0 is the element's embedding
    assert probe["teacher_leaks_target"] is True and len(probe["probe"]["per_layer"]["teacher"]) == 5


def test_injection_embeds_only_the_structures_of_the_splits(tmp_path):
    from crysdistill.cli.common import sample_path
    from crysdistill.config import load_config
    from crysdistill.data.readers import read_dataset
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import prepare

    ds = read_dataset(sample_path(), limit=120)
    cfg = load_config(TrainConfig, extra={"student": "cgcnn", "targets": ["formation_energy_per_atom"],
                                          "teacher": "chgnet", "train_size": 40, "val_size": 20, "test_size": 20,
                                          "cache_dir": str(tmp_path), "workers": 1,
                                          "distill": {"node_weight": 0.0, "inject_layers": [4]}})
    prep = prepare(cfg, ds)
    assert prep.embeddings is None  # no distillation term: nothing embedded for it
    assert prep.injected.n_computed == 80 and len(prep.injected.keys) == 120


def test_embed_with_a_foundation_teacher(tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert main(["embed", "--teacher", "chgnet", "--data", "sample", "--limit", "12", "--layers", "0,-1",
                 "-o", str(out)]) == 0
    z = np.load(out)
    assert list(z["layers"]) == [0, 4] and z["graph"].shape == (12, 128) and str(z["teacher"]) == "chgnet"
    assert z["node"].shape[0] == z["offsets"][-1] and len(z["ids"]) == 12
    assert np.allclose(z["graph"][0], z["node"][z["offsets"][0]:z["offsets"][1]].mean(0), atol=1e-6)
    assert main(["embed", "--teacher", "chgnet", "--data", "sample", "-o", str(out), "graph.cutoff=6"]) == 2
    assert "builds its own graphs" in capsys.readouterr().err
