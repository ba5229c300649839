"""Encoder distillation on an unlabelled corpus, and students started from the distilled encoder."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from crysdistill.cli import main
from crysdistill.errors import CheckpointError

SMALL = ["model.width=16", "model.layers=2", "threads=1"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A small CGCNN encoder distilled from CHGNet on the bundled sample (its labels unused)."""
    out = tmp_path_factory.mktemp("distill") / "run"
    assert main(["distill", "--teacher", "chgnet", "--data", "sample", "--out", str(out), "--epochs", "4",
                 "--seed", "0", *SMALL, "teacher_layers=[0,2,4]", "val_fraction=0.1"]) == 0
    return out


def test_distillation_writes_a_self_describing_student(distilled):
    from crysdistill.utils import load_checkpoint

    rows = list(csv.DictReader(open(distilled / "metrics.csv")))
    assert len(rows) == 4 and set(rows[0]) >= {"val_ev_L0", "val_ev_L2", "val_ev_L4", "val_loss"}
    # the held-out loss falls, and explained variance is 1 - the normalised loss of each layer
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"]) < 1.0
    for r in rows:
        evs = [float(r[f"val_ev_L{k}"]) for k in (0, 2, 4)]
        assert np.mean(evs) == pytest.approx(1 - float(r["val_loss"]), abs=1e-5)
    ckpt = load_checkpoint(distilled / "student.pt")
    d = ckpt["distillation"]
    assert d["teacher"] == "chgnet" and d["teacher_layers"] == [0, 2, 4] and d["n_val"] == 40 and d["n_train"] == 360
    assert "MPtrj" in d["trained_on"]["dataset"] and len(d["corpus_fingerprint"]) == 16
    assert ckpt["trained_keys"] and not any(k.startswith("head") for k in ckpt["trained_keys"])
    s = json.loads((distilled / "summary.json").read_text())
    assert s["best_epoch"] == 4 and s["teacher_computed"] >= 0


def test_distillation_resumes_and_extends(distilled, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(distilled, run)
    assert main(["distill", "--teacher", "chgnet", "--data", "sample", "--out", str(run), "--epochs", "5",
                 "--seed", "0", *SMALL, "teacher_layers=[0,2,4]", "val_fraction=0.1", "--resume"]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert main(["distill", "--teacher", "chgnet", "--data", "sample", "--out", str(run), "--epochs", "6",
                 "--seed", "1", *SMALL, "--resume"]) == 2


def test_train_init_starts_from_the_encoder_and_predicts_without_teacher(distilled, tmp_path, capsys):
    from crysdistill.students.checkpoint import load_student
    from crysdistill.utils import load_checkpoint

    out = tmp_path / "ft"
    assert main(["train", "--student", "cgcnn", "--init", str(distilled / "student.pt"), "--data", "sample",
                 "--target", "formation_energy_per_atom", "--train-size", "60", "--val-size", "20", "--test-size", "20",
                 "--epochs", "2", "--out", str(out), *SMALL]) == 0
    assert "(distilled from chgnet)" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["init"] == str(distilled / "student.pt") and s["init_distillation"]["teacher"] == "chgnet"
    assert s["teacher"] is None and s["inject_layers"] == []
    # the encoder was copied, the head was not
    from crysdistill.distill.corpus import init_from
    from crysdistill.students.registry import build_student

    torch.manual_seed(5)
    fresh = build_student("cgcnn", {"width": 16, "layers": 2})
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    info = init_from(fresh, str(distilled / "student.pt"))
    enc = load_checkpoint(distilled / "student.pt")
    for k, v in fresh.state_dict().items():
        if k in enc["trained_keys"]:
            assert torch.equal(v, enc["state_dict"][k]), k
        else:
            assert torch.equal(v, before[k]), k
    assert info["loaded"] == len(enc["trained_keys"]) and info["kept"]
    student, _ = load_student(out / "best.pt")
    assert student.name == "cgcnn"
    # predicting needs no teacher package: run it with chgnet and sevenn made unimportable
    code = ("import sys; sys.modules['chgnet'] = None; sys.modules['sevenn'] = None; "
            "from crysdistill.cli import main; "
            f"sys.exit(main(['predict', '--checkpoint', {str(out / 'best.pt')!r}, '--data', 'sample', '--limit', '30', "
            f"'-o', {str(tmp_path / 'p.csv')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "predicted 30 structure(s)" in res.stdout


def test_init_refuses_another_student_or_config(distilled):
    from crysdistill.distill.corpus import init_from
    from crysdistill.students.registry import build_student

    with pytest.raises(CheckpointError, match="another cgcnn model config.*width"):
        init_from(build_student("cgcnn", {"width": 32, "layers": 2}), str(distilled / "student.pt"))
    with pytest.raises(CheckpointError, match="is a 'cgcnn' encoder"):
        init_from(build_student("gatgnn", {"width": 16, "layers": 2, "heads": 2, "head_width": 16}),
                  str(distilled / "student.pt"))
    with pytest.raises(CheckpointError, match="neither a student.pt nor a shipped"):
        init_from(build_student("cgcnn", {}), "cgcnn-nosuchteacher")


def test_shipped_pre_distilled_students_are_listed_and_start_a_student(capsys):
    """Every shipped encoder describes its teacher and corpus, is listed, and starts a CGCNN."""
    from crysdistill.distill.corpus import bundled_students, init_from
    from crysdistill.students.registry import build_student
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.utils import load_checkpoint

    shipped = bundled_students()
    assert {"cgcnn-chgnet", "cgcnn-sevennet"} <= set(shipped)
    assert main(["students", "list"]) == 0
    out = capsys.readouterr().out
    for name, path in shipped.items():
        ckpt = load_checkpoint(path)
        d = ckpt["distillation"]
        assert name in out and d["corpus"].endswith("pretrain_unlabelled.jsonl.gz") and d["n_train"] > 40000
        assert d["teacher_fingerprint"] == load_teacher(d["teacher"]).fingerprint  # the installed teacher
        assert min(float(v) for v in d["val_explained_variance"].values()) > 0.5
        info = init_from(build_student(ckpt["student"]["name"], ckpt["student"]["config"]), name)
        assert info["loaded"] == len(ckpt["trained_keys"])


def test_corpus_term_keeps_the_encoder_on_the_teacher(distilled, tmp_path, capsys):
    """corpus.weight > 0: the distillation loss on corpus structures outside the splits stays on while training."""
    from crysdistill.data.cache import structure_key
    from crysdistill.data.readers import read_dataset
    from crysdistill.utils import load_checkpoint

    common = ["train", "--student", "cgcnn", "--init", str(distilled / "student.pt"), "--data", "sample",
              "--target", "formation_energy_per_atom", "--train-size", "60", "--val-size", "20", "--test-size", "20",
              "--epochs", "2", *SMALL]
    out = tmp_path / "ct"
    assert main([*common, "--out", str(out), "corpus.weight=0.5", "corpus.max_structures=50"]) == 0
    assert "still matching chgnet on 50 corpus structures (weight 0.5)" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    c = s["corpus"]
    assert c["teacher"] == "chgnet" and c["teacher_layers"] == [0, 2, 4] and c["n_structures"] == 50
    assert c["n_excluded_in_splits"] == 100  # the corpus is the run's own file: its 100 split structures are left out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(0 < float(r["train_corpus_loss"]) < 2 for r in rows)
    # the corpus term's maps resume with the run; the student still predicts with no teacher
    assert load_checkpoint(out / "last.pt")["corpus_head"]
    assert main([*common, "--epochs", "3", "--out", str(out), "corpus.weight=0.5", "corpus.max_structures=50",
                 "--resume"]) == 0
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 3
    # none of the corpus structures used is in the run's splits (by content)
    from crysdistill.cli.common import sample_path
    from crysdistill.config import load_config
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import prepare

    ds = read_dataset(sample_path("sample"))
    cfg = load_config(TrainConfig, None, ["model.width=16", "model.layers=2", "corpus.weight=1",
                                          "corpus.max_structures=0"],
                      extra={"student": "cgcnn", "targets": ["formation_energy_per_atom"], "train_size": 60,
                             "val_size": 20, "test_size": 20, "init": str(distilled / "student.pt"), "workers": 1})
    prep = prepare(cfg, ds)
    by_id = {r.id: r for r in ds.records}
    in_splits = {structure_key(by_id[prep.graphs.ids[i]].structure) for v in prep.splits.values() for i in v}
    used = {structure_key(by_id[i].structure) for i in prep.corpus.graphs.ids}
    assert len(in_splits) == 100 and not used & in_splits and len(used) == len(ds) - 100
    # without --init there is nothing to keep distilling: one line
    capsys.readouterr()
    assert main(["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
                 "--epochs", "1", "--out", str(tmp_path / "x"), "corpus.weight=1", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corpus.weight needs --init" in err


@pytest.mark.slow
def test_torchrun_data_parallel_distillation_and_resume(tmp_path):
    """``torchrun --nproc_per_node 2 -m crysdistill distill`` (gloo on CPU): rank 0 alone writes the run and
    reports once; the held-out metric covers every held-out structure; ``--resume`` continues under torchrun."""
    import os
    import socket

    from crysdistill.distill.corpus import init_from
    from crysdistill.students.registry import build_student
    from crysdistill.utils import load_checkpoint

    def torchrun(*extra):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "crysdistill", "distill", "--teacher", "chgnet", "--data", "sample",
               "--limit", "48", "--out", str(out), "--seed", "0", "--batch-size", "8", "--workers", "1", *SMALL,
               "teacher_layers=[0,4]", "val_fraction=0.25", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)

    out = tmp_path / "ddp"
    r = torchrun("--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("distilled from chgnet on 36 structures") == 1  # rank 0 reports; 12 held out
    assert "2 processes on cpu" in r.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2]  # one writer
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])  # the held-out loss falls
    ckpt = load_checkpoint(out / "student.pt")
    assert ckpt["distillation"]["n_train"] == 36 and ckpt["distillation"]["n_val"] == 12
    adapter = build_student("cgcnn", {"width": 16, "layers": 2}, n_targets=1)
    assert init_from(adapter, str(out / "student.pt"))["loaded"] > 0
    r = torchrun("--epochs", "3", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [int(x["epoch"]) for x in csv.DictReader(open(out / "metrics.csv"))] == [1, 2, 3]
