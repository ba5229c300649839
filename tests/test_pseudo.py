"""The teacher-labelled corpus (TrainConfig.pseudo): response distillation on unlabelled structures."""

from __future__ import annotations

import csv
import json

from crysdistill.cli import main
from crysdistill.cli.common import sample_path

ELASTIC = ["--data", "sample:elasticity", "--target", "log_kvrh", "--train-size", "60", "--val-size", "30",
           "--test-size", "60", "--limit", "300", "--epochs", "2", "--workers", "1", "threads=1"]


def test_teacher_labelled_corpus_end_to_end(tmp_path, capsys):
    """A head on the teacher labels a corpus; the student trains on it too and predicts with no teacher."""
    out = tmp_path / "run"
    # the corpus is the elasticity sample itself: every structure of the run's splits must be left out
    assert main(["train", "--student", "cgcnn", *ELASTIC, "--pseudo-teacher", "default", "--pseudo-data",
                 "sample:elasticity", "--out", str(out), "pseudo.weight=0.5", "pseudo.max_structures=0"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    ps = summary["pseudo"]
    assert ps["teacher"] == "crysgnn:default" and ps["weight"] == 0.5 and ps["head_n_train"] == 60 and ps["head_n_val"] == 30
    assert ps["n_excluded_in_splits"] == 150 and ps["n_labelled"] == 1181 - 150
    assert f"on {ps['n_labelled']} structures labelled by crysgnn:default + head (weight 0.5)" in printed
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(float(r["train_pseudo_loss"]) > 0 for r in rows)
    split = json.loads((out / "splits.json").read_text())
    assert len(split["train"]) == 60 and summary["teacher"] is None
    # best.pt carries no teacher: predict needs none
    assert main(["predict", "--checkpoint", str(out / "best.pt"), "--data", "sample:elasticity", "--limit", "20",
                 "-o", str(tmp_path / "p.csv")]) == 0
    assert "predicted 20 structure(s)" in capsys.readouterr().out


def test_pseudo_labels_never_come_from_the_test_split(tmp_path):
    from crysdistill.config import load_config
    from crysdistill.data.cache import structure_key
    from crysdistill.data.readers import read_dataset
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import prepare

    ds = read_dataset(sample_path("sample:elasticity"), limit=200)
    cfg = load_config(TrainConfig, extra={"student": "cgcnn", "targets": ["log_kvrh"], "train_size": 50,
                                          "val_size": 25, "test_size": 50, "workers": 1, "cache_dir": str(tmp_path),
                                          "pseudo": {"teacher": "default", "data": sample_path("sample:elasticity")}})
    prep = prepare(cfg, ds)
    by_id = {r.id: r for r in ds.records}
    in_splits = {structure_key(by_id[prep.graphs.ids[i]].structure) for v in prep.splits.values() for i in v}
    corpus = {r.id: r for r in read_dataset(sample_path("sample:elasticity")).records}
    labelled = {structure_key(corpus[i].structure) for i in prep.pseudo.graphs.ids}
    assert not labelled & in_splits and len(labelled) == prep.pseudo.info["n_labelled"]
    assert prep.pseudo.y.shape == (len(prep.pseudo.graphs), 1)
    # labels in the user's units, near the training labels' range
    assert prep.y[prep.splits["train"]].min() - 1 < prep.pseudo.y.mean() < prep.y[prep.splits["train"]].max() + 1


def test_pseudo_needs_a_corpus(capsys):
    assert main(["train", "--student", "cgcnn", *ELASTIC, "--pseudo-teacher", "default", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pseudo.data" in err
