"""crysdistill finetune: a teacher trained end to end on labels, then a predictor and a teacher again."""

from __future__ import annotations

import csv
import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from crysdistill.cli import main
from crysdistill.testing import TeacherConformance

ARGS = ["--data", "sample:elasticity", "--target", "log_kvrh", "--train-size", "60", "--val-size", "30",
        "--test-size", "60", "--limit", "200", "--workers", "1"]


@functools.lru_cache(maxsize=1)
def finetuned_chgnet() -> Path:
    """CHGNet fine-tuned for two epochs on 60 elastic moduli (shared by the tests of this module)."""
    out = Path(tempfile.mkdtemp(prefix="crysdistill-ft-")) / "ft"
    assert main(["finetune", "--teacher", "chgnet", *ARGS, "--epochs", "2", "--out", str(out), "threads=1"]) == 0
    return out


def test_finetune_selects_on_validation_and_tests_once(capsys):
    out = finetuned_chgnet()
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # epoch 0 is the linear-probe stage (the head fitted on the frozen teacher), a candidate like the others
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and float(rows[0]["lr_backbone"]) == 0
    assert summary["best_epoch"] in (0, 1, 2)
    assert summary["val_mae"] == pytest.approx(min(float(r["val_mae"]) for r in rows))
    # the probe's candidates: the one-hidden-layer head and the MLPs of `crysdistill head`; the best is epoch 0
    cands = summary["probe_candidates"]
    assert len(cands) == 4 and float(rows[0]["val_mae"]) == pytest.approx(min(cands.values()))
    assert summary["n_train"] == 60 and summary["n_test"] == 60 and np.isfinite(summary["test_mae"])
    assert 0 < float(rows[1]["lr_backbone"]) < float(rows[1]["lr_head"])
    # the split is the one `train` makes with the same sizes and seed
    assert main(["train", "--student", "cgcnn", *ARGS, "--epochs", "1", "--out", str(out.parent / "t")]) == 0
    a, b = json.loads((out / "splits.json").read_text()), json.loads((out.parent / "t" / "splits.json").read_text())
    assert all(a[k] == b[k] for k in ("train", "val", "test"))
    # the file records the base teacher and what it was fine-tuned on
    ckpt = torch.load(out / "teacher.pt", weights_only=True)
    assert ckpt["plugin"] == "chgnet" and ckpt["fine_tuned_on"]["targets"] == ["log_kvrh"]
    assert ckpt["head_layers"] == [0, 1, 2, 3, 4] and ckpt["epoch"] == summary["best_epoch"]
    assert {k: ckpt[k] for k in ("head_hidden", "head_depth", "head_dropout")} == {
        k: summary["head"][k] for k in ("head_hidden", "head_depth", "head_dropout")}
    # fine-tuning changed the backbone's weights (the file holds the selected epoch's: the base ones at epoch 0)
    from crysdistill.teachers.registry import load_teacher

    base = load_teacher("chgnet").module.state_dict()
    last = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(base[k], v) for k, v in last.items() if v.is_floating_point())
    changed = any(not torch.equal(base[k], v) for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    assert changed == (summary["best_epoch"] > 0)


def test_finetuned_teacher_predicts_and_is_a_teacher(tmp_path, capsys):
    out = finetuned_chgnet()
    assert main(["predict", "--checkpoint", str(out / "teacher.pt"), "--data", "sample:elasticity", "--limit", "200",
                 "-o", str(tmp_path / "p.csv")]) == 0
    pred = {r["id"]: float(r["log_kvrh_prediction"]) for r in csv.DictReader(open(tmp_path / "p.csv"))}
    test = {r["id"]: float(r["log_kvrh_prediction"]) for r in csv.DictReader(open(out / "predictions_test.csv"))}
    assert np.allclose([pred[i] for i in test], list(test.values()), atol=1e-5)
    capsys.readouterr()
    assert main(["teacher", "info", str(out / "teacher.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "finetuned" and "log_kvrh" in info["trained_on"]["leaked_targets"]
    # as a teacher: injected into a student, whose run then names the leak
    assert main(["train", "--student", "cgcnn", *ARGS, "--epochs", "1", "--teacher", str(out / "teacher.pt"),
                 "distill.node_weight=0", "distill.inject_layers=[4]", "--out", str(tmp_path / "inj")]) == 0
    s = json.loads((tmp_path / "inj" / "summary.json").read_text())
    # fine-tuned on this very run's training and validation labels: nothing the run does not see itself
    assert s["teacher_leaks_target"] is False and s["inject_layers"] == [4]
    from crysdistill.teachers.base import leaks_into
    from crysdistill.teachers.registry import load_teacher

    ft = load_teacher(str(out / "teacher.pt"))
    seen = sorted(ft.seen_ids())
    assert len(seen) == 90 and not leaks_into(ft, "log_kvrh", seen)
    # elsewhere (labels the run does not have, or no run at all) its fine-tuned target counts as leaked
    assert leaks_into(ft, "log_kvrh", seen[1:]) and leaks_into(ft, "log_kvrh") and not leaks_into(ft, "log_gvrh", [])


def test_finetune_refuses_a_teacher_that_cannot_be_fine_tuned(tmp_path, capsys):
    assert main(["finetune", "--teacher", "default", *ARGS, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be fine-tuned" in err


def test_finetune_resumes_from_its_last_epoch(tmp_path):
    out = tmp_path / "r"
    args = ["finetune", "--teacher", "chgnet", *ARGS, "--out", str(out), "threads=1"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


class TestFineTunedTeacher(TeacherConformance):
    teacher = "finetuned"

    def spec(self) -> str:
        return f"finetuned:{finetuned_chgnet() / 'teacher.pt'}"


def test_a_teacher_fine_tuned_on_test_labels_is_refused(tmp_path, capsys):
    """Another split puts structures the teacher was fine-tuned on into the test split: one clear line."""
    out = finetuned_chgnet()
    for extra in (["--teacher", str(out / "teacher.pt"), "distill.node_weight=0", "distill.inject_layers=[4]"],
                  ["--pseudo-teacher", str(out / "teacher.pt"), "--pseudo-data", "sample"]):
        assert main(["train", "--student", "cgcnn", *ARGS, "--epochs", "1", "--seed", "5", *extra,
                     "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "was fine-tuned on the labels of" in err and "test split" in err


def test_a_finetuned_teacher_labels_a_corpus_with_its_own_head(tmp_path):
    """Task-specific distillation: the corpus labels are what the fine-tuned teacher itself predicts."""
    from crysdistill.cli.common import sample_path
    from crysdistill.config import load_config
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.finetune import predict_finetuned
    from crysdistill.train.trainer import prepare

    out = finetuned_chgnet()
    ds = read_dataset(sample_path("sample:elasticity"), limit=200)
    cfg = load_config(TrainConfig, extra={"student": "cgcnn", "targets": ["log_kvrh"], "train_size": 60,
                                          "val_size": 30, "test_size": 60, "workers": 1, "cache_dir": str(tmp_path),
                                          "pseudo": {"teacher": str(out / "teacher.pt"), "max_structures": 12,
                                                     "data": sample_path("sample:elasticity")}})
    ps = prepare(cfg, ds).pseudo
    assert ps.info["head"] == "own (fine-tuned)" and ps.info["teacher_leaks_target"] is False
    assert ps.info["n_labelled"] == 12 and ps.info["head_n_train"] == 60
    corpus = {r.id: r for r in read_dataset(sample_path("sample:elasticity")).records}
    sub = Dataset("corpus", [corpus[i] for i in ps.graphs.ids])
    predict_finetuned(out / "teacher.pt", sub, tmp_path / "p.csv")
    pred = {r["id"]: float(r["log_kvrh_prediction"]) for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert np.allclose(ps.y[:, 0], [pred[i] for i in ps.graphs.ids], atol=1e-4)


def test_a_first_format_head_still_loads():
    """Files of the first format (head on the last layer's mean, no standardisation) predict as before."""
    from types import SimpleNamespace

    from crysdistill.teachers.base import TeacherOutput
    from crysdistill.train.finetune import load_head

    torch.manual_seed(0)
    old = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    head = load_head({"format": 1, "targets": ["y"], "head_hidden": 8, "head": old.state_dict()},
                     SimpleNamespace(layer_widths=[3, 4]))
    layers = [torch.randn(5, 3), torch.randn(5, 4)]
    out = TeacherOutput(layers, torch.tensor([0, 2, 5]))
    want = old(torch.stack([layers[1][:2].mean(0), layers[1][2:].mean(0)]))
    assert head.layers == [1] and torch.allclose(head(out), want, atol=1e-6)


def test_the_probe_keeps_the_candidate_best_on_validation():
    """On features where a wide two-layer MLP fits and a one-unit head cannot, the probe keeps the
    MLP of the grid (with its own depth and dropout), and a file with that head predicts alike."""
    from types import SimpleNamespace

    from crysdistill.teachers.base import TeacherOutput
    from crysdistill.train.finetune import FinetuneConfig, FinetuneHead, _probe_stage, load_head
    from crysdistill.train.splits import Normalizer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = (torch.sin(2 * x[:, :1]) * x[:, 1:2] + 0.5 * x[:, 2:3] ** 2).numpy()
    norm = Normalizer.fit(y[:200])
    cfg = FinetuneConfig(teacher="chgnet", targets=["y"], head_hidden=1, probe_steps=50)
    torch.manual_seed(0)
    head = FinetuneHead([0], 6, 1, 1)
    with torch.no_grad():
        head.mean.copy_(x[:200].mean(0).float())
        head.std.copy_(x[:200].std(0).float())
    state = torch.get_rng_state()
    kept, _, _, val, cands = _probe_stage(head, x[:200].float(), torch.tensor(norm.encode(y[:200])).float(),
                                          x[200:].float(), y[200:], norm, cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the grid leaves the fine-tuning's random stream alone
    assert len(cands) == 4 and val == min(cands.values())
    first = cands["mlp(h=1,depth=1,l1)"]
    assert val < first and kept is not head and kept.arch["head_depth"] == 2 and kept.arch["head_dropout"] > 0
    ckpt = {"format": 3, "targets": ["y"], "head_layers": [0], "head": kept.state_dict(), **kept.arch}
    loaded = load_head(ckpt, SimpleNamespace(layer_widths=[6]))
    out = TeacherOutput([x[200:].float()], torch.arange(101))  # one atom per structure
    kept.eval()
    assert torch.allclose(loaded(out), kept(out), atol=1e-6)
    with_grid_off = _probe_stage(FinetuneHead([0], 6, 1, 1), x[:200].float(),
                                 torch.tensor(norm.encode(y[:200])).float(), x[200:].float(), y[200:], norm,
                                 FinetuneConfig(teacher="chgnet", targets=["y"], head_hidden=1, probe_steps=50,
                                                probe_grid=False))
    assert list(with_grid_off[4]) == ["mlp(h=1,depth=1,l1)"]
