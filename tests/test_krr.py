"""Kernel ridge regression on averaged teacher embeddings: end to end, hyperparameters, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from crysdistill.data.readers import read_dataset
from crysdistill.errors import UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.train.krr import (
    DEFAULT_ALPHAS,
    DEFAULT_GAMMA_SCALES,
    KERNELS,
    KRRResult,
    fit_krr,
    format_krr,
    median_gamma,
    run_krr,
)
from crysdistill.train.splits import make_splits

TARGET = "formation_energy_per_atom"
N_SAMPLE = 200
SIZES = {"train_size": 120, "val_size": 30, "test_size": 50}


def test_fit_krr_learns_a_smooth_function() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(260, 2))
    y = np.sin(2 * x[:, 0]) + x[:, 1] ** 2
    splits = make_splits(len(y), 200, 30, 30, seed=0)
    fit = fit_krr(x, y, splits)
    test_mae = np.abs(fit["pred"]["test"] - y[splits["test"]]).mean()
    mean_mae = np.abs(y[splits["test"]] - y[splits["train"]].mean()).mean()
    assert test_mae < 0.1 * mean_mae
    assert len(fit["grid"]) == len(KERNELS) * len(DEFAULT_GAMMA_SCALES) * len(DEFAULT_ALPHAS)
    best = min(fit["grid"], key=lambda g: g["val_mae"])
    assert (fit["kernel"], fit["alpha"], fit["gamma"]) == (best["kernel"], best["alpha"], best["gamma"])


def test_median_gamma() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # squared distances 1, 4, 5 → median 4; L1 distances 1, 2, 3 → median 2
    assert median_gamma("rbf", x) == pytest.approx(1 / 4)
    assert median_gamma("laplacian", x) == pytest.approx(1 / 2)


def test_run_krr_end_to_end(teacher: Teacher, sample_teacher_graphs, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    res = run_krr(teacher, sample_teacher_graphs, TARGET, seed=0, output=out, **SIZES)
    assert isinstance(res, KRRResult)
    assert (res.n_train, res.n_val, res.n_test) == (120, 30, 50)
    assert res.layers == [0, 1, 2] and res.dim == 3 * 16
    assert res.test_mae < res.mean_test_mae
    assert res.kernel in ("rbf", "laplacian") and res.alpha > 0 and res.gamma > 0
    assert res.val_mae == pytest.approx(min(g["val_mae"] for g in res.grid))
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["id", "target", "prediction"] and len(rows) == 1 + 50
    ids = set(sample_teacher_graphs.ids)
    assert all(r[0] in ids for r in rows[1:])
    mae = np.mean([abs(float(r[1]) - float(r[2])) for r in rows[1:]])
    assert mae == pytest.approx(res.test_mae)
    text = format_krr(res)
    assert "test        MAE" in text and "120 train / 30 validation / 50 test" in text
    json.dumps(res.to_dict())


def test_same_split_for_every_feature_kind(teacher: Teacher, sample_teacher_graphs) -> None:
    comp = run_krr(teacher, sample_teacher_graphs, TARGET, features="composition", kernels=("rbf",), **SIZES)
    assert comp.layers == [] and comp.dim == 100 + 2 * 92
    assert comp.test_mae < comp.mean_test_mae
    untrained = run_krr(teacher, sample_teacher_graphs, TARGET, features="untrained", layers=[2], kernels=("rbf",), **SIZES)
    assert untrained.dim == 16
    # the same test structures: the mean baseline is identical
    assert comp.mean_test_mae == pytest.approx(untrained.mean_test_mae)


def test_errors(teacher: Teacher, sample_teacher_graphs, sample_path: Path) -> None:
    with pytest.raises(UserError, match=r"target 'gap' not found; labels present: formation_energy_per_atom"):
        run_krr(teacher, sample_teacher_graphs, "gap")
    with pytest.raises(UserError, match=r"layer -4 does not exist"):
        run_krr(teacher, sample_teacher_graphs, TARGET, layers=[0, -4])
    with pytest.raises(UserError, match=r"only 6 structure\(s\) have a numeric"):
        run_krr(teacher, read_dataset(sample_path, limit=6), TARGET)
    with pytest.raises(UserError, match=r"exceed the 200 usable structures"):
        run_krr(teacher, sample_teacher_graphs, TARGET, train_size=190, val_size=20, test_size=20)
    with pytest.raises(UserError, match=r"unknown kernel 'poly'"):
        run_krr(teacher, sample_teacher_graphs, TARGET, kernels=("poly",), **SIZES)


@pytest.mark.parametrize("extra, message", [
    (["--target", "band_gap"], "target 'band_gap' not found; labels present: formation_energy_per_atom"),
    (["--target", TARGET, "--layers", "0,3"], "layer 3 does not exist"),
    (["--target", TARGET, "--limit", "4"], "only 4 structure(s) have a numeric"),
    (["--target", TARGET, "--train-size", "500"], "exceed the 200 usable structures"),
])
def test_cli_errors(run_cli, teacher_path: Path,
                    extra: list[str], message: str) -> None:
    code, out, err = run_cli("krr", "--teacher", str(teacher_path), "--data", "sample",
                           "--limit", str(N_SAMPLE), *extra)
    assert code == 2
    assert err.startswith("crysdistill: error: ") and message in err
    assert err.count("\n") == 1


def test_cli_krr(run_cli, teacher_path: Path,
                 tmp_path: Path) -> None:
    out_csv = tmp_path / "p.csv"
    code, out, err = run_cli("krr", "--teacher", str(teacher_path), "--data", "sample",
                           "--limit", str(N_SAMPLE), "--target", TARGET, "--train-size", "120", "--val-size", "30",
                           "--test-size", "50", "--kernel", "rbf", "-o", str(out_csv), "--json")
    assert code == 0
    res = json.loads(out)
    assert res["n_test"] == 50 and res["kernel"] == "rbf" and res["test_mae"] < res["mean_test_mae"]
    assert len(out_csv.read_text().splitlines()) == 51
    # composition features need no teacher
    code, out, err = run_cli("krr", "--features", "composition", "--data", "sample",
                           "--limit", str(N_SAMPLE), "--target", TARGET, "--train-size", "120", "--val-size", "30",
                           "--test-size", "50")
    assert code == 0 and "composition features" in out
