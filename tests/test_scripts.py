"""The analysis scripts behind docs/teacher.md (distill_gap.py, compare_recipes.py, space_group_errors.py), end to end."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from crysdistill.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distill_gap_distance_and_r2_arithmetic():
    gap = _load("distill_gap")
    t = gap.unit(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert gap.distance(3 * t, t) == pytest.approx(0.0)  # the distance ignores length
    assert gap.distance(t[::-1], t) == pytest.approx(2.0)  # orthogonal directions
    assert gap.distance(-t, t) == pytest.approx(4.0)
    assert gap.r2(t, t) == pytest.approx(1.0)
    assert gap.r2(np.broadcast_to(t.mean(0), t.shape), t) == pytest.approx(0.0)


def test_distill_gap_on_trained_runs(tmp_path, teacher_path, capsys):
    gap = _load("distill_gap")
    common = ["train", "--student", "cgcnn", "--data", "sample", "--target", "formation_energy_per_atom",
              "--train-size", "40", "--val-size", "20", "--test-size", "20", "--epochs", "1", "--batch-size", "20",
              "--seed", "0", "--cache-dir", str(tmp_path / "c"), "model.layers=1"]
    runs = {"vanilla": tmp_path / "vanilla", "distilled": tmp_path / "distilled"}
    assert cli([*common, "--out", str(runs["vanilla"])]) == 0
    assert cli([*common, "--out", str(runs["distilled"]), "--teacher", str(teacher_path)]) == 0
    capsys.readouterr()
    assert gap.main(["--teacher", str(teacher_path), str(runs["vanilla"]), str(runs["distilled"])]) == 0
    out = capsys.readouterr().out
    assert "40 training and 20 validation structures" in out
    found = re.findall(r"^(.+?)\s+distance (\S+)\s+R² (\S+)$", out, flags=re.M)
    names = [name.strip() for name, _, _ in found]
    assert names[0] == "element only" and len(names) == 3
    assert names[1].startswith("cgcnn ") and names[1].endswith("/vanilla")
    assert names[2].startswith("cgcnn ") and names[2].endswith("/distilled")
    for _, d, r in found:
        assert 0.0 <= float(d) <= 4.0 and float(r) <= 1.0


def test_distill_gap_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    gap = _load("distill_gap")
    from crysdistill.errors import UserError

    with pytest.raises(UserError, match="no best.pt"):
        gap.main([str(tmp_path)])


@pytest.fixture
def probe_dir(tmp_path: Path, sample_path: Path, write_jsonl) -> Path:
    """The two probe sets compare_recipes.py reads, made of real sample structures (made-up log_kvrh)."""
    with gzip.open(sample_path, "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(40), fh)]
    data = tmp_path / "probes"
    data.mkdir()
    write_jsonl(data / "mp_eform_flla2015.jsonl.gz", rows)
    write_jsonl(data / "mp_elasticity_dejong2015.jsonl.gz",
                [{**r, "log_kvrh": 2.0 - r["formation_energy_per_atom"]} for r in rows])
    return data


@pytest.mark.slow
def test_compare_recipes_crysgnn_recipe_is_the_crysgnn_config():
    """The named recipes start from configs/crysgnn.yaml itself, not a copy of it."""
    from crysdistill.config import to_dict
    from crysdistill.teacher.pretrain import load_pretrain_config

    recipes = _load("compare_recipes")
    from_recipe = load_pretrain_config(None, recipes.RECIPES["crysgnn"])
    assert to_dict(from_recipe) == to_dict(load_pretrain_config(ROOT / "configs" / "crysgnn.yaml"))
    assert from_recipe.encoder.angular_orders == 0


def test_compare_recipes_pretrains_probes_and_reuses(tmp_path, sample_path, probe_dir, capsys):
    recipes = _load("compare_recipes")
    out = tmp_path / "recipes"
    argv = ["--data", str(sample_path), "--data-dir", str(probe_dir), "--limit", "40", "--epochs", "1",
            "--recipes", "crysgnn", "--recipe", "narrow:encoder.width=16", "--untrained", "1", "--out", str(out),
            "-O", "threads=1", "-O", "loader_workers=0", "-O", "batch_size=16", "-O", "encoder.layers=2"]
    assert recipes.main(argv) == 0
    first = capsys.readouterr().out
    assert "crysgnn: pretrained in" in first and "narrow: pretrained in" in first
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"crysgnn", "narrow"}
    assert results["narrow"]["overrides"] == ["encoder.width=16"]
    for name, entry in results.items():
        assert set(entry["probes"]) == {"formation_energy_per_atom", "log_kvrh"}
        for p in entry["probes"].values():
            assert p["n_labelled"] == 40 and p["mae_last"] > 0 and p["composition_mae"] > 0
        # the pretext heads are scored on exactly the structures that run held out
        n_val = json.loads((out / name / "split.json").read_text())["n_val"]
        assert entry["held_out"]["n_structures"] == n_val == 2
        assert 0 <= entry["held_out"]["space_group_top1"] <= entry["held_out"]["space_group_top5"] <= 1
    # the table has a row per recipe, and a second call reuses the teachers instead of pretraining again
    assert re.search(r"^\| narrow \| \d+ \| 2 \| [01]\.\d{3} \| [01]\.\d{3} \| [01]\.\d{3} \| 0\.\d{3}", first,
                     flags=re.M)
    assert recipes.main([*argv, "--no-probes"]) == 0
    second = capsys.readouterr().out
    assert "pretrained in" not in second and "log_kvrh" not in second


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The number of unique classes")
def test_space_group_errors_on_a_pretrained_teacher(tmp_path, sample_path, write_jsonl, capsys):
    errors = _load("space_group_errors")
    run = tmp_path / "teacher"
    assert cli(["pretrain", "--data", str(sample_path), "--limit", "60", "--workers", "1", "--out", str(run),
                "--epochs", "1", "encoder.width=16", "encoder.layers=2", "batch_size=16", "threads=1",
                "loader_workers=0", "val_fraction=0.25", "--cache-dir", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    out_json = tmp_path / "errors.json"
    argv = ["--teacher", str(run / "teacher.pt"), "--data", str(sample_path), "--trees", "5", "--json", str(out_json)]
    assert errors.main(argv) == 0
    res = json.loads(out_json.read_text())
    assert (res["n_train"], res["n_heldout"]) == (45, 15)  # the teacher's own split of the first 60 records
    assert res["tolerances"]["0.01"]["labels_changed"] == 0.0  # the labels are those at the teacher's tolerance
    for r in res["tolerances"].values():
        assert 0 <= r["top1"] <= r["top5"] <= 1
    assert len(res["baselines"]) == 5 and all(0 <= b["top1"] <= b["top5"] <= 1 for b in res["baselines"].values())
    assert "| random forest, composition + cell shape |" in capsys.readouterr().out

    # other data than the teacher was pretrained on cannot give its held-out split
    with gzip.open(sample_path, "rt") as fh:
        rows = [json.loads(line) for line in fh][::-1]
    other = write_jsonl(tmp_path / "reversed.jsonl.gz", rows)
    from crysdistill.errors import UserError

    with pytest.raises(UserError, match="not the data teacher"):
        errors.main(["--teacher", str(run / "teacher.pt"), "--data", str(other), "--trees", "5"])
