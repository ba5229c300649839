"""scripts/benchmark.py on a tiny dataset: paired runs, the safeguard column, resumable grid, outputs."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def phonon_dir(tmp_path: Path, sample_path: Path, write_jsonl) -> Path:
    """A ``matbench_phonons.jsonl.gz`` of 30 real sample structures with a made-up peak label."""
    with gzip.open(sample_path, "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(30), fh)]
    for r in rows:
        r["last_phdos_peak"] = 500.0 + 100.0 * r.pop("formation_energy_per_atom")
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "matbench_phonons.jsonl.gz", rows)
    return data


def test_benchmark_grid_pairs_runs_and_adds_safeguard(tmp_path, phonon_dir, teacher_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "bench"
    argv = ["--students", "cgcnn", "--targets", "last_phdos_peak", "--seeds", "0", "--epochs", "2",
            "--weights", "0.1", "--teacher", str(teacher_path), "--data-dir", str(phonon_dir), "--out", str(out),
            "-O", "model.layers=1", "-O", "batch_size=8", "-O", "threads=1", "-O", "workers=1"]
    assert bench.main(argv) == 0
    with open(out / "results.csv") as fh:
        rows = {r["mode"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"vanilla", "distill-w0.1", "safeguard"}
    # the recorded 60/20/20 split of 30 structures, the same for both runs
    assert {(r["n_train"], r["n_val"], r["n_test"]) for r in rows.values()} == {("18", "6", "6")}
    runs = {m: Path(rows[m]["run"]) for m in ("vanilla", "distill-w0.1")}
    assert (runs["vanilla"] / "splits.json").read_text() == (runs["distill-w0.1"] / "splits.json").read_text()
    assert rows["vanilla"]["teacher_fingerprint"] in ("", "None")
    assert rows["distill-w0.1"]["teacher_fingerprint"] not in ("", "None")
    # the safeguard is whichever run is better on validation, never chosen by test
    best = min(("vanilla", "distill-w0.1"), key=lambda m: float(rows[m]["val_mae"]))
    assert rows["safeguard"]["test_mae"] == rows[best]["test_mae"]
    summary = (out / "summary.md").read_text()
    assert "| cgcnn | last_phdos_peak (cm^-1) | 18 | safeguard |" in summary
    van = float(rows["vanilla"]["test_mae"])
    change = 100 * (float(rows["distill-w0.1"]["test_mae"]) / van - 1)
    assert f"| cgcnn | last phonon DOS peak (cm⁻¹) | 18 | {van:.1f} ± 0.0 | " in summary
    assert f"({change:+.1f} %)" in summary
    assert (out / "curve_cgcnn_last_phdos_peak.png").stat().st_size > 0
    assert (out / "parity_cgcnn_last_phdos_peak.png").stat().st_size > 0

    # a second call skips finished runs and rebuilds the same table
    stamp = (runs["vanilla"] / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert (runs["vanilla"] / "summary.json").stat().st_mtime_ns == stamp
    assert "seed=0" not in capsys.readouterr().out

    # a run interrupted after its last epoch (no summary.json yet) resumes: no epoch is trained again
    (runs["vanilla"] / "summary.json").unlink()
    last = (runs["vanilla"] / "last.pt").stat().st_mtime_ns
    metrics = (runs["vanilla"] / "metrics.csv").read_text()
    assert bench.main(argv) == 0
    assert (runs["vanilla"] / "last.pt").stat().st_mtime_ns == last
    assert (runs["vanilla"] / "metrics.csv").read_text() == metrics
    with open(out / "results.csv") as fh:
        again = {r["mode"]: r for r in csv.DictReader(fh)}
    assert again["vanilla"]["test_mae"] == rows["vanilla"]["test_mae"]


def test_benchmark_rejects_unknown_target(tmp_path, phonon_dir):
    bench = _load_benchmark()
    with pytest.raises(SystemExit, match="unknown target 'bandgap'"):
        bench.main(["--targets", "bandgap", "--data-dir", str(phonon_dir), "--out", str(tmp_path / "o")])


def test_compact_table_pairs_seeds_and_marks_partial_cells():
    bench = _load_benchmark()
    rows = [{"student": "cgcnn", "target": "band_gap", "n_train": 250, "seed": s, "mode": "vanilla", "test_mae": v}
            for s, v in enumerate([1.0, 2.0, 3.0])]
    rows += [{"student": "cgcnn", "target": "band_gap", "n_train": 250, "seed": s, "mode": "distill-w0.1",
              "test_mae": v} for s, v in enumerate([1.1, 2.2])]
    table = bench.compact(rows)
    # seeds 0 and 1 only: (1.1 + 2.2) / (1.0 + 2.0) = +10 %, not against the 3-seed vanilla mean
    assert "| cgcnn | band gap (eV) | 250 | 2.0000 ± 1.0000 | 1.6500 ± 0.7778 (+10.0 %) [2 of 3 seeds] |" in table


def test_benchmark_missing_data_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--targets", "last_phdos_peak",
                           "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"benchmark.py: error: {tmp_path / 'nowhere' / 'matbench_phonons.jsonl.gz'}: no such file or directory; "
        "check the path"]


def test_write_corpus_leaves_out_the_grids_held_out_structures(tmp_path, phonon_dir):
    """The corpus for a teacher that may not see the benchmark's validation and test structures:
    exactly the grid's held-out ids are missing, every other record is kept whole."""
    bench = _load_benchmark()
    out = tmp_path / "bench"
    corpus = tmp_path / "corpus.jsonl.gz"
    common = ["--students", "cgcnn", "--targets", "last_phdos_peak", "--data-dir", str(phonon_dir),
              "-O", "threads=1", "-O", "workers=1"]
    assert bench.main([*common, "--write-corpus", str(corpus)]) == 0
    assert bench.main([*common, "--seeds", "0", "--epochs", "1", "--weights", "0", "--out", str(out),
                       "-O", "model.layers=1"]) == 0
    split = json.loads(next((out / "runs").glob("*/*/*/vanilla/seed0/splits.json")).read_text())
    with gzip.open(corpus, "rt") as fh:
        kept = [json.loads(line) for line in fh]
    with gzip.open(phonon_dir / "matbench_phonons.jsonl.gz", "rt") as fh:
        every = [json.loads(line) for line in fh]
    assert {r["id"] for r in kept} == {r["id"] for r in every} - set(split["val"]) - set(split["test"])
    assert set(split["train"]) <= {r["id"] for r in kept} and len(kept) == 18
    assert kept == [r for r in every if r["id"] in {k["id"] for k in kept}]
    test = tmp_path / "test.jsonl.gz"
    assert bench.main([*common, "--write-test", str(test)]) == 0
    with gzip.open(test, "rt") as fh:
        assert sorted(json.loads(line)["id"] for line in fh) == sorted(split["test"])


def test_benchmark_head_reference_and_init_modes(tmp_path, phonon_dir, capsys):
    """--heads adds the teacher + head reference on the same split (not a safeguard candidate);
    --init adds students started from a distilled encoder."""
    from crysdistill.cli import main

    enc = tmp_path / "enc"
    assert main(["distill", "--teacher", "crysgnn", "--data", str(phonon_dir / "matbench_phonons.jsonl.gz"),
                 "--out", str(enc), "--epochs", "1", "model.layers=1", "threads=1", "val_fraction=0.2"]) == 0
    bench = _load_benchmark()
    out = tmp_path / "bench"
    argv = ["--students", "cgcnn", "--targets", "last_phdos_peak", "--seeds", "0", "--epochs", "2", "--weights", "0",
            "--heads", "composition,crysgnn", "--init", str(enc / "student.pt"), "--data-dir", str(phonon_dir),
            "--out", str(out), "-O", "model.layers=1", "-O", "batch_size=8", "-O", "threads=1", "-O", "workers=1"]
    assert bench.main(argv) == 0
    with open(out / "results.csv") as fh:
        rows = {r["mode"]: r for r in csv.DictReader(fh)}
    init_mode = "init-" + str(enc / "student.pt").replace("/", "_")
    assert set(rows) == {"vanilla", init_mode, "head-composition", "head-crysgnn", "safeguard"}
    assert rows["safeguard"]["run"] in (rows["vanilla"]["run"], rows[init_mode]["run"])
    head = json.loads((Path(rows["head-crysgnn"]["run"]) / "summary.json").read_text())["head"]
    assert head["n_train"] == 18 and head["n_test"] == 6 and head["teacher"] == "crysgnn"
    split = json.loads((Path(rows["vanilla"]["run"]) / "splits.json").read_text())
    assert json.loads((Path(rows[init_mode]["run"]) / "splits.json").read_text())["test"] == split["test"]


def test_benchmark_finetuned_ceiling_and_its_labels(tmp_path, phonon_dir, sample_path):
    """--finetune adds the fine-tuned teacher on each cell's split (not a safeguard candidate); a --pseudo
    pattern makes each cell's fine-tuned teacher label the corpus; --mode-suffix keeps variants apart."""
    bench = _load_benchmark()
    out = tmp_path / "bench"
    common = ["--students", "cgcnn", "--targets", "last_phdos_peak", "--seeds", "0", "--epochs", "1", "--weights", "0",
              "--data-dir", str(phonon_dir), "--out", str(out), "-O", "model.layers=1", "-O", "batch_size=8",
              "-O", "threads=1", "-O", "workers=1"]
    assert bench.main([*common, "--finetune", "chgnet", "--finetune-epochs", "1", "--finetune-option",
                       "probe_steps=20", "--pseudo", "{out}/runs/{student}/{target}/n{n}/finetune-chgnet/seed{seed}/"
                       "teacher.pt", "--pseudo-data", str(sample_path), "-O", "pseudo.max_structures=40"]) == 0
    assert bench.main([*common, "--mode-suffix=-l1", "-O", "loss=l1"]) == 0
    with open(out / "results.csv") as fh:
        rows = {r["mode"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"vanilla", "vanilla-l1", "finetune-chgnet", "pseudo-finetuned-chgnet", "safeguard"}
    assert rows["safeguard"]["run"] != rows["finetune-chgnet"]["run"]
    ft = json.loads((Path(rows["finetune-chgnet"]["run"]) / "summary.json").read_text())
    assert ft["n_train"] == 18 and ft["n_test"] == 6 and ft["epochs"] == 1
    split = json.loads((Path(rows["vanilla"]["run"]) / "splits.json").read_text())
    assert json.loads((Path(rows["finetune-chgnet"]["run"]) / "splits.json").read_text())["test"] == split["test"]
    ps = json.loads((Path(rows["pseudo-finetuned-chgnet"]["run"]) / "summary.json").read_text())["pseudo"]
    # the fixture's 30 structures are the sample's first 30: all of them in the splits, left out of the corpus
    assert ps["head"] == "own (fine-tuned)" and ps["n_excluded_in_splits"] == 30 and ps["n_labelled"] == 40
    l1 = (Path(rows["vanilla-l1"]["run"]) / "config.yaml").read_text()
    assert "loss: l1" in l1
