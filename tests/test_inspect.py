"""``crysdistill data inspect``: summaries, and one clear stderr line (exit code 2) for every kind
of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from crysdistill.cli import main
from crysdistill.data.graph import GraphSettings
from crysdistill.data.inspect import format_report, inspect_dataset
from crysdistill.errors import RecordError, UserError


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["data", "inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def two_atoms(a: float, species: tuple[str, str], second: tuple[float, float, float]) -> Structure:
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], list(second)])


# Each bad input: a function writing it into a folder and returning the path, and the pieces
# the one-line message must contain (the file or record, what is wrong, what to do).
BadInput = Callable[[Path, Path], Path]


def _missing(tmp: Path, fixtures: Path) -> Path:
    return tmp / "nope.jsonl"


def _unparseable(tmp: Path, fixtures: Path) -> Path:
    p = tmp / "junk.cif"
    p.write_text("this is not a CIF\n")
    return p


def _partial(tmp: Path, fixtures: Path) -> Path:
    return fixtures / "partial_occupancy.cif"


def _too_close(tmp: Path, fixtures: Path) -> Path:
    p = tmp / "close.cif"
    CifWriter(two_atoms(4.0, ("Na", "Cl"), (0.1, 0, 0))).write_file(p)
    return p


def _og(tmp: Path, fixtures: Path) -> Path:
    p = tmp / "og.jsonl"
    row = {"id": "og-1", "structure": two_atoms(4.0, ("Og", "Cl"), (0.5, 0.5, 0.5)).as_dict()}
    p.write_text(json.dumps(row) + "\n")
    return p


def _lonely(tmp: Path, fixtures: Path) -> Path:
    p = tmp / "lonely.json"
    p.write_text(json.dumps([Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]]).as_dict()]))
    return p


def _id_prop_missing_file(tmp: Path, fixtures: Path) -> Path:
    d = tmp / "folder"
    d.mkdir()
    CifWriter(two_atoms(4.0, ("Na", "Cl"), (0.5, 0.5, 0.5))).write_file(d / "a.cif")
    (d / "id_prop.csv").write_text("a,1.0\nb,2.0\n")
    return d


def _empty(tmp: Path, fixtures: Path) -> Path:
    p = tmp / "empty.jsonl.gz"
    import gzip

    with gzip.open(p, "wt") as fh:
        fh.write("")
    return p


BAD_INPUTS: dict[str, tuple[BadInput, str, list[str]]] = {
    # name: (writer, file or record named, [what is wrong, what to do])
    "missing file": (_missing, "nope.jsonl", ["no such file or directory", "check the path"]),
    "unparseable": (_unparseable, "junk.cif", ["cannot parse as CIF or POSCAR", "fix the file or remove it"]),
    "partial occupancy": (_partial, "partial_occupancy.cif",
                          ["disordered structure (partial occupancies)", "OrderDisorderedStructureTransformation"]),
    "atoms too close": (_too_close, "close.cif (close)", ["0.400 Å apart (closer than 0.5 Å)", "fix or remove it"]),
    "element without features": (_og, "og.jsonl:1 (og-1)",
                                 ["element(s) Og outside the 'cgcnn' atom feature table (Z 1–100)",
                                  "remove structures with these elements"]),
    "no neighbour": (_lonely, "lonely.json[0] (lonely-0)",
                     ["atom 0 (Na) has no neighbour within 8.0 Å", "increase the graph cutoff"]),
    "id_prop names a missing file": (_id_prop_missing_file, "id_prop.csv:2",
                                     ["names 'b' but no file b.cif", "exists in"]),
    "empty file": (_empty, "empty.jsonl.gz", ["no usable structures found", "check the path and format"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case, tmp_path, fixtures_dir, capsys):
    write, named, pieces = BAD_INPUTS[case]
    path = write(tmp_path, fixtures_dir)
    code, out, err = run_cli(capsys, str(path), "--on-error", "raise", "--workers", "1",
                             "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("crysdistill: error: ") and "Traceback" not in err
    assert named in line
    for piece in pieces:
        assert piece in line


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_user_error_from_library(case, tmp_path, fixtures_dir):
    write, named, pieces = BAD_INPUTS[case]
    path = write(tmp_path, fixtures_dir)
    with pytest.raises(UserError) as info:
        inspect_dataset(str(path), on_error="raise", cache_dir=tmp_path / "cache")
    assert named in str(info.value) and all(p in str(info.value) for p in pieces)
    if case not in ("missing file", "empty file"):
        assert isinstance(info.value, RecordError)  # a record-level problem, with record and reason


def test_console_script_prints_no_traceback(tmp_path, fixtures_dir):
    """The real process: stderr is exactly one line (no warnings, no traceback), exit code 2."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "crysdistill", "data", "inspect", str(_og(tmp_path, fixtures_dir)),
                           "--on-error", "raise", "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("crysdistill: error: "), proc.stderr


# --------------------------------------------------------------------------------------------
# skipping bad records


@pytest.fixture
def mixed(tmp_path, nacl, cu_primitive, fixtures_dir, write_jsonl) -> Path:
    """Three good records and six bad ones, each bad for another reason."""
    partial_cif = (fixtures_dir / "partial_occupancy.cif").read_text()
    rows = [
        {"id": "good-1", "structure": nacl.as_dict(), "e_form": -2.0, "gap": 5.0},
        "{broken json",
        {"id": "partial", "structure": partial_cif, "e_form": 1.0},
        {"id": "good-2", "structure": cu_primitive.as_dict(), "e_form": 0.0, "gap": None},
        {"id": "close", "structure": two_atoms(4.0, ("Na", "Cl"), (0.1, 0, 0)).as_dict(), "e_form": 1.0},
        {"id": "og", "structure": two_atoms(4.0, ("Og", "Cl"), (0.5, 0.5, 0.5)).as_dict(), "e_form": 1.0},
        {"id": "lonely", "structure": Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]]).as_dict()},
        {"id": "good-3", "structure": two_atoms(4.0, ("Cs", "Cl"), (0.5, 0.5, 0.5)).as_dict(), "e_form": -1.5},
        {"id": "good-1", "structure": nacl.as_dict()},
    ]
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


EXPECTED_PROBLEMS = [
    ("mixed.jsonl:2", "not valid JSON"),
    ("mixed.jsonl:3 (partial)", "disordered structure"),
    ("mixed.jsonl:5 (close)", "closer than 0.5 Å"),
    ("mixed.jsonl:9 (good-1)", "duplicate id 'good-1'"),
    ("mixed.jsonl:6 (og)", "element(s) Og outside"),
    ("mixed.jsonl:7 (lonely)", "has no neighbour within 8.0 Å"),
]


def test_skip_keeps_good_records_and_lists_problems(mixed, tmp_path, capsys):
    code, out, err = run_cli(capsys, str(mixed), "--on-error", "skip", "--cache-dir", str(tmp_path / "c"))
    assert code == 0 and err == ""
    assert "5 read, 3 with graphs, 6 problems" in out
    problems = out[out.index("\nproblems\n"):].splitlines()[2:]
    assert len(problems) == 6
    for line, (record, reason) in zip(problems, EXPECTED_PROBLEMS):
        assert record in line and reason in line


def test_skip_is_the_default(mixed, tmp_path, capsys):
    code, out, _ = run_cli(capsys, str(mixed), "--cache-dir", str(tmp_path / "c"))
    assert code == 0 and "6 problems" in out


def test_json_output(mixed, tmp_path, capsys):
    code, out, err = run_cli(capsys, str(mixed), "--json", "--workers", "2", "--cache-dir", str(tmp_path / "c"))
    assert code == 0
    rep = json.loads(out)
    assert rep["n_structures"] == 5 and rep["n_graphs"] == 3
    assert rep["elements"] == {"Cl": 3, "Na": 2, "Cs": 1, "Cu": 1, "Og": 1}  # structures per element
    assert rep["elements_without_features"] == ["Og"]
    assert rep["labels"]["e_form"] == {"count": 4, "missing": 1, "mean": pytest.approx(-0.625),
                                       "std": pytest.approx(1.19242, abs=1e-4), "min": -2.0, "max": 1.0,
                                       "skewness": pytest.approx(0.18662, abs=1e-4), "heavy_tail": None}
    assert rep["labels"]["gap"]["count"] == 1 and rep["labels"]["gap"]["missing"] == 4
    assert len(rep["problems"]) == 6
    for p, (record, reason) in zip(rep["problems"], EXPECTED_PROBLEMS):
        assert p["record"].endswith(record) and reason in p["reason"]
    assert rep["crystal_systems"] == {"cubic": 3}
    assert rep["graphs"]["built_now"] == 3 and rep["graphs"]["mean_neighbors"] == 12.0
    code, out, _ = run_cli(capsys, str(mixed), "--json", "--cache-dir", str(tmp_path / "c"))
    assert json.loads(out)["graphs"]["built_now"] == 0 and json.loads(out)["graphs"]["cached"] == 3


def test_sample_report(capsys, tmp_path):
    code, out, err = run_cli(capsys, "sample", "--limit", "30", "--workers", "1", "--cache-dir", str(tmp_path))
    assert code == 0
    assert "30 read, 30 with graphs, 0 problems" in out
    assert "formation_energy_per_atom" in out and "spglib symprec 0.01" in out


# --------------------------------------------------------------------------------------------
# symmetry failures are labelled, not dropped


def test_spglib_failure_is_counted_as_unknown(tmp_path, nacl, write_jsonl):
    """Two like atoms 0.52 Å apart with symprec 0.6 Å: spglib gives up; the record stays."""
    odd = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.13, 0, 0]])
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "nacl", "structure": nacl.as_dict()},
                                              {"id": "odd", "structure": odd.as_dict()}])
    rep = inspect_dataset(str(path), settings=GraphSettings(symprec=0.6), cache_dir=tmp_path / "c")
    assert rep["n_structures"] == rep["n_graphs"] == 2 and rep["problems"] == []
    assert rep["space_groups"] == {"225": 1, "unknown": 1}
    assert rep["crystal_systems"] == {"cubic": 1, "unknown": 1}
    assert rep["symmetry"] == {"symprec": 0.6, "angle_tolerance": 5.0, "unknown": 1}
    assert "unknown 1" in format_report(rep)


def test_heavy_tail_is_pointed_out():
    """A positive label with a few extreme values gets the log transform suggested; a signed one L1/Huber."""
    from crysdistill.data.inspect import heavy_tail

    rng = np.random.default_rng(0)
    tailed = np.exp(rng.normal(0.0, 1.5, 500))  # log-normal, like moduli or dielectric constants
    assert "target_transform=log" in heavy_tail(tailed)
    assert "loss=l1" in heavy_tail(np.concatenate([tailed, [-1.0]]))
    assert heavy_tail(rng.normal(0.0, 1.0, 500)) is None
