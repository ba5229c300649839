"""The shared training loop: run folder, selection on validation, distillation, resume, predict, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crysdistill.cli import main
from crysdistill.cli.common import sample_path
from crysdistill.config import load_config
from crysdistill.errors import UserError
from crysdistill.train.config import TrainConfig
from crysdistill.train.splits import make_splits
from crysdistill.train.trainer import fit, prepare, train_student

SAMPLE = str(sample_path())
SMALL = ["--train-size", "48", "--val-size", "24", "--test-size", "24", "--epochs", "2", "--batch-size", "16"]
CGCNN_SMALL = ["model.layers=1"]


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {"student": "cgcnn", "targets": ["formation_energy_per_atom"], "train_size": 48, "val_size": 24,
            "test_size": 24, "epochs": 2, "batch_size": 16, "cache_dir": str(tmp_path / "cache"), "workers": 1,
            "model": {"layers": 1}}
    base.update(kw)
    return load_config(TrainConfig, extra=base)


def test_splits_are_disjoint_seeded_and_nested():
    a = make_splits(100, 20, 10, 30, seed=3)
    b = make_splits(100, 40, 10, 30, seed=3)
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["val"]) & set(a["test"])
    assert (a["test"] == b["test"]).all() and (a["val"] == b["val"]).all()  # fixed test set across sizes
    assert set(a["train"]) <= set(b["train"])  # learning-curve training sets are nested
    assert (make_splits(100, 0.5, 0.2, 0.2, seed=1)["train"].size == 50)


def test_train_cli_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
               *SMALL, "--seed", "0", "--out", str(out), "--cache-dir", str(tmp_path / "c"), *CGCNN_SMALL])
    assert rc == 0
    for name in ("config.yaml", "splits.json", "metrics.csv", "best.pt", "last.pt", "predictions_test.csv",
                 "summary.json"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ("test_mae", "val_mae", "best_epoch", "n_train", "n_val", "n_test", "seconds", "student",
                "teacher_fingerprint"):
        assert key in s
    assert (s["n_train"], s["n_val"], s["n_test"]) == (48, 24, 24)
    assert s["teacher_fingerprint"] is None
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2
    # best epoch is the one with the lowest validation MAE
    vals = [float(r["val_mae"]) for r in rows]
    assert s["best_epoch"] == int(np.argmin(vals)) + 1
    assert s["val_mae"] == pytest.approx(min(vals))
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["test"]) == 24 and not set(splits["train"]) & set(splits["test"])
    preds = list(csv.DictReader(open(out / "predictions_test.csv")))
    assert len(preds) == 24
    mae = np.mean([abs(float(r["formation_energy_per_atom_target"]) - float(r["formation_energy_per_atom_prediction"]))
                   for r in preds])
    assert mae == pytest.approx(s["test_mae"], rel=1e-6)
    assert "test MAE" in capsys.readouterr().out


def test_distilled_run_keeps_teacher_frozen(tmp_path, teacher_path):
    cfg = _cfg(tmp_path, teacher=teacher_path)
    prep = prepare(cfg, SAMPLE)
    before = {k: v.clone() for k, v in prep.teacher.module.state_dict().items()}
    assert prep.embeddings is not None and prep.embeddings.n_computed == 48
    res = fit(cfg, prep, tmp_path / "run")
    assert np.isfinite(res["val_mae"])
    enc = prep.teacher.module
    assert not enc.training
    assert all(not p.requires_grad for p in enc.parameters())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm buffers unchanged
    # embeddings come from the cache the second time
    assert prepare(cfg, SAMPLE).embeddings.n_computed == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[0]["train_distill_node"]) > 0


def test_distilled_from_a_teacher_with_bond_angles(tmp_path):
    """A teacher whose encoder reads bond orientations (``encoder.angular_orders``) distils like
    any other: its embeddings come from the cached graph's positions, nothing else is needed."""
    from crysdistill.data.graph import GraphSettings
    from crysdistill.teacher.checkpoint import save_teacher
    from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig

    torch.manual_seed(2)
    path = tmp_path / "angular.pt"
    save_teacher(path, CrysGNNEncoder(EncoderConfig(width=16, layers=2, angular_orders=3)), GraphSettings())
    cfg = _cfg(tmp_path, teacher=path)
    prep = prepare(cfg, SAMPLE)
    assert prep.teacher.module.config.angular_orders == 3 and prep.embeddings.n_computed == 48
    assert np.isfinite(fit(cfg, prep, tmp_path / "run")["val_mae"])


def test_safeguard_grid_selects_on_validation(tmp_path, teacher_path):
    out = tmp_path / "run"
    rc = main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
               *SMALL, "--teacher", str(teacher_path), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
               *CGCNN_SMALL, "distill.weight_grid=[0,0.5]"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    grid = s["weight_grid_val_mae"]
    assert set(grid) == {"0", "0.5"}
    assert s["distill_weight"] == min((v, float(k)) for k, v in grid.items())[1]
    assert s["val_mae"] == pytest.approx(min(grid.values()))


def test_resume_continues_and_matches_uninterrupted(tmp_path):
    args = ["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
            "--train-size", "48", "--val-size", "24", "--test-size", "24", "--batch-size", "16",
            "--cache-dir", str(tmp_path / "c"), *CGCNN_SMALL]
    part = tmp_path / "part"
    assert main([*args, "--epochs", "3", "--out", str(part), "optim.scheduler=none"]) == 0
    # a run stopped after 2 epochs, resumed (extended) to 3, must equal 3 straight epochs
    inter = tmp_path / "inter"
    assert main([*args, "--epochs", "2", "--out", str(inter), "optim.scheduler=none"]) == 0
    # pretend the first two epochs took 1,000 s: the resumed run's wall time must include them
    state = torch.load(inter / "last.pt", weights_only=True)
    state["seconds"] += 1000.0
    torch.save(state, inter / "last.pt")
    assert main([*args, "--epochs", "3", "--out", str(inter), "--resume", "optim.scheduler=none"]) == 0
    a = json.loads((part / "summary.json").read_text())
    b = json.loads((inter / "summary.json").read_text())
    assert b["val_mae"] == pytest.approx(a["val_mae"], rel=1e-5)
    assert len(list(csv.DictReader(open(inter / "metrics.csv")))) == 3
    assert b["train_seconds"] > 1000 and b["seconds"] > b["train_seconds"]


def test_predict_roundtrip_and_errors(tmp_path, teacher_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
                 *SMALL, "--out", str(out), "--cache-dir", str(tmp_path / "c"), *CGCNN_SMALL]) == 0
    pred_csv = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--data", "sample", "-o", str(pred_csv),
                 "--limit", "30", "--cache-dir", str(tmp_path / "c")]) == 0
    rows = list(csv.DictReader(open(pred_csv)))
    test_rows = {r["id"]: r for r in csv.DictReader(open(out / "predictions_test.csv"))}
    common = [r for r in rows if r["id"] in test_rows]
    for r in common:  # predict reproduces the training run's test predictions
        assert float(r["formation_energy_per_atom_prediction"]) == pytest.approx(
            float(test_rows[r["id"]]["formation_energy_per_atom_prediction"]), rel=1e-5, abs=1e-6)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(teacher_path), "--data", "sample", "-o", str(pred_csv)]) == 2
    assert "not a student checkpoint" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--student", "alignn", "--data", "sample",
                 "-o", str(pred_csv)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a 'cgcnn' checkpoint" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--student", "nosuch", "--target", "formation_energy_per_atom"], "unknown student 'nosuch'; installed:"),
        (["--student", "cgcnn", "--target", "band_gapp"], "target 'band_gapp' not found; labels present"),
        (["--student", "cgcnn", "--target", "formation_energy_per_atom", "optim.lrr=1"], "did you mean 'lr'"),
        (["--student", "cgcnn", "--target", "formation_energy_per_atom", "--teacher", "missing.pt"],
         "checkpoint not found"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, capsys, argv, expected):
    rc = main(["train", "--data", "sample", "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
               *SMALL, *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_labels_skip_or_raise(tmp_path, capsys):
    import gzip

    rows = [json.loads(line) for line in gzip.open(SAMPLE, "rt")][:120]
    rows[3]["formation_energy_per_atom"] = None
    rows[7]["formation_energy_per_atom"] = "n/a"
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = ["train", "--student", "cgcnn", "--data", str(data), "--target", "formation_energy_per_atom",
              "--train-size", "40", "--val-size", "20", "--test-size", "20", "--epochs", "1",
              "--cache-dir", str(tmp_path / "c"), *CGCNN_SMALL]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["n_missing_labels"] == 2
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "b"), "missing_labels=raise"]) == 2
    err = capsys.readouterr().err
    assert "d.jsonl:4" in err and "missing or not a number" in err


def test_embedding_injection_trains_and_predicts(tmp_path, teacher_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
                 *SMALL, "--teacher", str(teacher_path), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                 *CGCNN_SMALL, "distill.inject_layers=[0,1,2]", "distill.node_weight=0"]) == 0
    # the closing line names what the run did with the teacher: input, no distillation loss
    assert f"cgcnn with {teacher_path}'s layers 0,1,2 as input:" in capsys.readouterr().out
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["student"]["extra_atom_features"] == 3 * 16
    assert ckpt["inject"]["layers"] == [0, 1, 2]
    pred_csv = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--data", "sample", "-o", str(pred_csv),
                 "--cache-dir", str(tmp_path / "c")]) == 0
    rows = {r["id"]: r for r in csv.DictReader(open(pred_csv))}
    for r in csv.DictReader(open(out / "predictions_test.csv")):
        assert float(rows[r["id"]]["formation_energy_per_atom_prediction"]) == pytest.approx(
            float(r["formation_energy_per_atom_prediction"]), rel=1e-5, abs=1e-6)


def test_safeguard_with_injection_can_fall_back_to_vanilla(tmp_path, teacher_path, capsys):
    """With injection on, the safeguard's candidates include the plain student (no teacher): its
    sub-run equals a vanilla run, and the kept model, summary and closing line agree on the choice."""
    common = ["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
              *SMALL, "--cache-dir", str(tmp_path / "c"), *CGCNN_SMALL]
    out = tmp_path / "run"
    assert main([*common, "--teacher", str(teacher_path), "--out", str(out),
                 "distill.inject_layers=[1]", "distill.weight_grid=[0]"]) == 0
    line = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert set(s["weight_grid_val_mae"]) == {"vanilla", "0"}
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert s["weight_grid_val_mae"]["vanilla"] == pytest.approx(plain["val_mae"], rel=1e-5)
    chosen = min(s["weight_grid_val_mae"], key=s["weight_grid_val_mae"].get)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    if chosen == "vanilla":
        assert s["inject_layers"] == [] and ckpt["inject"] is None and "the safeguard chose it" in line
        assert s["test_mae"] == pytest.approx(plain["test_mae"], rel=1e-5)
    else:
        assert s["inject_layers"] == [1] and ckpt["inject"]["layers"] == [1] and "layers 1 as input" in line
    assert s["val_mae"] == pytest.approx(s["weight_grid_val_mae"][chosen])


def test_teacher_from_another_featuriser_is_refused(tmp_path, teacher_path, capsys):
    ckpt = torch.load(teacher_path, weights_only=True)
    ckpt["featurizer_fingerprint"] = "0123456789abcdef"  # e.g. made with another atom-feature table
    other = tmp_path / "other_teacher.pt"
    torch.save(ckpt, other)
    rc = main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
               *SMALL, "--teacher", str(other), "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "another atom-feature table or graph format" in err and str(other) in err


def test_log_target_and_robust_loss(tmp_path):
    """target_transform=log trains on log(y) and reports in the user's units; a non-positive label is
    one clear error; L1 and Huber losses train."""
    from crysdistill.train.splits import Normalizer

    n = Normalizer.fit(np.array([[1.0], [10.0], [100.0]]), "log")
    assert n.encode(np.array([[10.0]]))[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert n.decode(n.encode(np.array([[3.7]])))[0, 0] == pytest.approx(3.7)
    assert Normalizer.from_dict(n.to_dict()).transform == "log"
    assert Normalizer.from_dict({"mean": [0.0], "std": [1.0]}).transform == "none"  # older checkpoints
    # e_above_hull has zeros: refused in one line naming the record
    with pytest.raises(UserError, match=r"e_above_hull = 0 is not positive.*target_transform=log"):
        train_student(_cfg(tmp_path, targets=["e_above_hull"], target_transform="log"), SAMPLE, tmp_path / "x")
    s = train_student(_cfg(tmp_path, targets=["formation_energy_per_atom"], loss="l1"), SAMPLE, tmp_path / "l1")
    assert np.isfinite(s["test_mae"])
    # a positive target: band-gap-like shift of formation energy so that every label is positive
    from crysdistill.data.readers import read_dataset

    ds = read_dataset(SAMPLE)
    for r in ds.records:
        r.labels["pos"] = r.labels["formation_energy_per_atom"] + 5.0
    s = train_student(_cfg(tmp_path, targets=["pos"], target_transform="log", loss="huber"), ds, tmp_path / "lg")
    preds = list(csv.DictReader(open(tmp_path / "lg" / "predictions_test.csv")))
    assert all(float(r["pos_prediction"]) > 0 for r in preds)
    mae = np.mean([abs(float(r["pos_target"]) - float(r["pos_prediction"])) for r in preds])
    assert mae == pytest.approx(s["test_mae"], rel=1e-6)  # in the user's units
