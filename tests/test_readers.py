"""Readers: every input format gives the same records, labels parsed, missing labels → ``None``;
bad input raises a :class:`UserError` / :class:`RecordError` that names the file or record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from crysdistill.data.readers import Dataset, read_dataset, records_from_jarvis
from crysdistill.data.records import Record, check_structure
from crysdistill.errors import RecordError, UserError


def assert_same_structure(a: Structure, b: Structure, ordered: bool = True) -> None:
    """Same crystal; with ``ordered`` also the same lattice matrix and site order (CIF may reorient)."""
    assert len(a) == len(b)
    np.testing.assert_allclose(a.lattice.abc + a.lattice.angles, b.lattice.abc + b.lattice.angles, atol=1e-4)
    if ordered:
        np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-5)
        assert [s.symbol for s in a.species] == [s.symbol for s in b.species]
        diff = a.frac_coords - b.frac_coords
        np.testing.assert_allclose(diff - np.round(diff), 0, atol=1e-5)
    else:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        assert StructureMatcher(primitive_cell=False, scale=False).fit(a, b)


def cif_text(structure: Structure) -> str:
    return str(CifWriter(structure))


@pytest.fixture
def rows(nacl: Structure, cu_primitive: Structure, triclinic: Structure) -> list[dict]:
    """Records in the ``../shared/data`` format, with a missing and a null label."""
    return [
        {"id": "mp-1", "source": "test", "formula": "NaCl", "n_sites": 8, "spg_number": 225,
         "crystal_system": "cubic", "structure": nacl.as_dict(), "formation_energy_per_atom": -2.1,
         "band_gap": 5.0},
        {"id": "mp-2", "structure": cu_primitive.as_dict(), "formation_energy_per_atom": 0.0,
         "band_gap": None},
        {"id": "mp-3", "structure": triclinic.as_dict(), "band_gap": "NaN", "note": "free text"},
    ]


def check_rows(ds: Dataset, structures: list[Structure], ordered: bool = True) -> None:
    assert [r.id for r in ds.records] == ["mp-1", "mp-2", "mp-3"]
    for rec, s in zip(ds.records, structures):
        assert isinstance(rec, Record)
        assert_same_structure(rec.structure, s, ordered)
    assert ds.records[0].labels == {"formation_energy_per_atom": -2.1, "band_gap": 5.0}
    assert ds.records[1].labels == {"formation_energy_per_atom": 0.0, "band_gap": None}
    assert ds.records[2].labels == {"band_gap": None}  # a missing key stays missing; free text is no label
    assert ds.label_keys() == ["formation_energy_per_atom", "band_gap"]
    assert ds.problems == []


# --------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz"])
def test_jsonl_pymatgen_dict(tmp_path, rows, nacl, cu_primitive, triclinic, write_jsonl, name):
    ds = read_dataset(write_jsonl(tmp_path / name, rows))
    check_rows(ds, [nacl, cu_primitive, triclinic])
    assert ds.records[0].origin.endswith(f"{name}:1")


@pytest.mark.parametrize("key", ["structure", "cif"])
def test_jsonl_cif_string(tmp_path, rows, nacl, cu_primitive, triclinic, write_jsonl, key):
    for r in rows:
        s = Structure.from_dict(r.pop("structure"))
        r[key] = cif_text(s)
    ds = read_dataset(write_jsonl(tmp_path / "cif.jsonl.gz", rows))
    check_rows(ds, [nacl, cu_primitive, triclinic], ordered=False)


def test_jsonl_blank_lines_and_limit(tmp_path, rows, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [rows[0], "", "   ", rows[1], rows[2]])
    assert [r.id for r in read_dataset(path).records] == ["mp-1", "mp-2", "mp-3"]
    assert [r.id for r in read_dataset(path, limit=2).records] == ["mp-1", "mp-2"]


def test_jsonl_without_ids_gets_line_ids(tmp_path, nacl, write_jsonl):
    ds = read_dataset(write_jsonl(tmp_path / "d.jsonl", [{"structure": nacl.as_dict()}]))
    assert ds.records[0].id == "d.jsonl:1"
    assert ds.records[0].labels == {}


def test_json_list_of_structure_dicts(tmp_path, nacl, cu_primitive):
    path = tmp_path / "structs.json"
    path.write_text(json.dumps([nacl.as_dict(), cu_primitive.as_dict()]))
    ds = read_dataset(path)
    assert [r.id for r in ds.records] == ["structs-0", "structs-1"]
    assert_same_structure(ds.records[0].structure, nacl)
    assert_same_structure(ds.records[1].structure, cu_primitive)
    assert ds.label_keys() == []


def test_json_list_of_records(tmp_path, rows, nacl, cu_primitive, triclinic):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(rows))
    check_rows(read_dataset(path), [nacl, cu_primitive, triclinic])


def test_single_cif(fixtures_dir, nacl):
    ds = read_dataset(fixtures_dir / "nacl.cif")
    assert [r.id for r in ds.records] == ["nacl"]
    assert_same_structure(ds.records[0].structure, nacl, ordered=False)
    assert ds.records[0].labels == {}


@pytest.mark.parametrize("name", ["POSCAR", "Si.vasp"])
def test_single_poscar(tmp_path, triclinic, name):
    path = tmp_path / name
    Poscar(triclinic).write_file(path)
    ds = read_dataset(path)
    assert [r.id for r in ds.records] == [Path(name).stem]
    assert_same_structure(ds.records[0].structure, triclinic)  # POSCAR keeps the site order


# ---- folders with id_prop.csv (CGCNN and ALIGNN conventions)


def make_folder(folder: Path, structures: dict[str, Structure], id_prop: str, fmt: str = "cif") -> Path:
    folder.mkdir()
    for name, s in structures.items():
        if fmt == "cif":
            CifWriter(s).write_file(folder / name)
        else:
            Poscar(s).write_file(folder / name)
    (folder / "id_prop.csv").write_text(id_prop)
    return folder


def test_folder_cgcnn_no_header_one_target(tmp_path, nacl, cu_primitive):
    folder = make_folder(tmp_path / "d", {"mp-1.cif": nacl, "mp-2.cif": cu_primitive}, "mp-1,-2.1\nmp-2,0.5\n")
    ds = read_dataset(folder)
    assert [r.id for r in ds.records] == ["mp-1", "mp-2"]
    assert [r.labels for r in ds.records] == [{"target": -2.1}, {"target": 0.5}]
    assert_same_structure(ds.records[1].structure, cu_primitive, ordered=False)


def test_folder_no_header_multi_target(tmp_path, nacl, cu_primitive):
    folder = make_folder(tmp_path / "d", {"a.cif": nacl, "b.cif": cu_primitive}, "a,1.0,2.0\nb,3.0,\n")
    ds = read_dataset(folder)
    assert [r.labels for r in ds.records] == [{"target_0": 1.0, "target_1": 2.0},
                                              {"target_0": 3.0, "target_1": None}]


def test_folder_header_multi_target_missing_labels(tmp_path, nacl, cu_primitive, triclinic):
    folder = make_folder(tmp_path / "d", {"a.cif": nacl, "b.cif": cu_primitive, "c.cif": triclinic},
                         "id,eform,gap\na,-2.1,5.0\nb,0.0,na\nc,-1.0\n")
    ds = read_dataset(folder)
    assert ds.label_keys() == ["eform", "gap"]
    assert [r.labels for r in ds.records] == [{"eform": -2.1, "gap": 5.0}, {"eform": 0.0, "gap": None},
                                              {"eform": -1.0, "gap": None}]


def test_folder_alignn_file_names(tmp_path, nacl, triclinic):
    """ALIGNN's id_prop.csv names the file with its extension; POSCAR-<id> files are found too."""
    folder = make_folder(tmp_path / "d", {"JVASP-1.vasp": nacl, "POSCAR-JVASP-2": triclinic},
                         "JVASP-1.vasp,0.25\nJVASP-2,1.5\n", fmt="poscar")
    ds = read_dataset(folder)
    assert [r.id for r in ds.records] == ["JVASP-1", "JVASP-2"]
    assert [r.labels for r in ds.records] == [{"target": 0.25}, {"target": 1.5}]
    assert_same_structure(ds.records[0].structure, nacl)
    assert_same_structure(ds.records[1].structure, triclinic)


def test_folder_without_id_prop_reads_every_structure(tmp_path, nacl, cu_primitive):
    folder = tmp_path / "d"
    folder.mkdir()
    CifWriter(nacl).write_file(folder / "x.cif")
    Poscar(cu_primitive).write_file(folder / "y.vasp")
    (folder / "notes.txt").write_text("ignored")
    ds = read_dataset(folder)
    assert [r.id for r in ds.records] == ["x", "y"]
    assert all(r.labels == {} for r in ds.records)


# ---- JARVIS


def jarvis_reference() -> list[Structure]:
    """The structures of ``fixtures/jarvis_3.json`` (see ``fixtures/make_fixtures.py``)."""
    h = 5.43 / 2
    si = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    h = 5.64 / 2
    nacl = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    h = 3.615 / 2
    cu = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Cu"], [[0, 0, 0]])
    return [si, nacl, cu]


def check_jarvis(records: list[Record]) -> None:
    assert [r.id for r in records] == ["JVASP-TEST-1", "JVASP-TEST-2", "JVASP-TEST-3"]
    assert records[0].labels == {"formation_energy_peratom": 0.0, "optb88vdw_bandgap": 0.73,
                                 "mbj_bandgap": 1.28, "ehull": 0.0}
    assert records[1].labels["mbj_bandgap"] is None  # JARVIS writes "na" for missing values
    assert records[2].labels == {"formation_energy_peratom": 0.0, "optb88vdw_bandgap": 0.0,
                                 "mbj_bandgap": None, "ehull": None}
    from pymatgen.analysis.structure_matcher import StructureMatcher

    for rec, ref in zip(records, jarvis_reference()):
        assert StructureMatcher().fit(rec.structure, ref), rec.id
    assert len(records[2].structure) == 1


def test_jarvis_file_through_read_dataset(fixtures_dir):
    ds = read_dataset(fixtures_dir / "jarvis_3.json")
    check_jarvis(ds.records)


def test_records_from_jarvis(fixtures_dir):
    entries = json.loads((fixtures_dir / "jarvis_3.json").read_text())
    records = list(records_from_jarvis(entries, "dft_3d"))
    check_jarvis(records)
    assert records[0].origin == "dft_3d[0] (JVASP-TEST-1)"


def test_records_from_jarvis_bad_entry_is_a_problem(fixtures_dir):
    entries = json.loads((fixtures_dir / "jarvis_3.json").read_text())
    entries[1]["atoms"] = {"elements": ["Na"]}
    out = list(records_from_jarvis(entries, "dft_3d"))
    assert isinstance(out[0], Record) and isinstance(out[2], Record)
    assert out[1].record == "dft_3d[1] (JVASP-TEST-2)"
    assert "cannot convert JARVIS atoms" in out[1].reason


# --------------------------------------------------------------------------------------------
# bad input through the library


def test_missing_path():
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file or directory; check the path"):
        read_dataset("nope.jsonl")


def test_unparseable_cif(tmp_path):
    path = tmp_path / "junk.cif"
    path.write_text("this is not a CIF\n")
    with pytest.raises(RecordError, match=r"junk\.cif: cannot parse as CIF or POSCAR .*fix the file or remove it"):
        read_dataset(path)


def test_unparseable_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[{")
    with pytest.raises(UserError, match=r"bad\.json: cannot read JSON"):
        read_dataset(path)


def test_invalid_jsonl_line_names_the_line(tmp_path, rows, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [rows[0], "{not json", rows[1]])
    with pytest.raises(RecordError, match=r"d\.jsonl:2: not valid JSON .*fix or delete this line"):
        read_dataset(path)
    ds = read_dataset(path, on_error="skip")
    assert [r.id for r in ds.records] == ["mp-1", "mp-2"]
    assert [p.record for p in ds.problems] == [f"{path}:2"]


def test_partial_occupancy_cif(fixtures_dir):
    path = fixtures_dir / "partial_occupancy.cif"
    with pytest.raises(RecordError) as info:
        read_dataset(path)
    assert str(info.value).startswith(str(path))
    assert "disordered structure (partial occupancies)" in info.value.reason
    assert "OrderDisorderedStructureTransformation" in info.value.hint


def test_overlapping_atoms(tmp_path, write_jsonl):
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.1, 0, 0]])
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "bad", "structure": s.as_dict()}])
    with pytest.raises(RecordError, match=r"d\.jsonl:1 \(bad\): atoms 0 \(Na\) and 2 \(Cl\) are 0\.400 Å apart "
                                          r"\(closer than 0\.5 Å\); .*fix or remove it"):
        read_dataset(path)
    assert len(read_dataset(path, min_distance=0.3)) == 1


def test_overlap_through_periodic_images_is_found():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.01, 0, 0], [0.96, 0, 0]])
    with pytest.raises(RecordError, match="0.200 Å apart"):
        check_structure(s, "x")


def test_non_finite_coordinates(tmp_path, nacl, write_jsonl):
    d = nacl.as_dict()
    d["sites"][0]["abc"] = [float("nan"), 0.0, 0.0]
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"id": "nan", "structure": d})])
    with pytest.raises(RecordError, match=r"\(nan\): non-finite atomic coordinates"):
        read_dataset(path)


def test_id_prop_names_a_missing_file(tmp_path, nacl):
    folder = make_folder(tmp_path / "d", {"a.cif": nacl}, "a,1.0\nb,2.0\n")
    with pytest.raises(RecordError, match=r"id_prop\.csv:2: names 'b' but no file b\.cif"):
        read_dataset(folder)
    ds = read_dataset(folder, on_error="skip")
    assert [r.id for r in ds.records] == ["a"]
    assert "names 'b'" in ds.problems[0].reason


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl: no usable structures found; check the path and format"):
        read_dataset(path)


def test_empty_after_skipping(tmp_path, fixtures_dir, write_jsonl):
    cif = (fixtures_dir / "partial_occupancy.cif").read_text()
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "structure": cif}])
    with pytest.raises(UserError, match=r"no usable structures found: .*d\.jsonl:1 \(x\): disordered"):
        read_dataset(path, on_error="skip")


def test_id_prop_naming_only_missing_files_names_the_id(tmp_path, nacl):
    """A folder whose id_prop.csv lists files that do not exist: the error names the id, not just a count."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "id_prop.csv").write_text("b,2.0\nc,3.0\n")
    with pytest.raises(UserError) as info:
        read_dataset(folder, on_error="skip")
    msg = str(info.value)
    assert "names 'b' but no file b.cif" in msg and "id_prop.csv:1" in msg and "(and 1 more)" in msg
    assert "\n" not in msg


def test_duplicate_ids(tmp_path, nacl, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "structure": nacl.as_dict()}] * 2)
    with pytest.raises(RecordError, match="duplicate id 'a'"):
        read_dataset(path)


def test_bad_on_error_value(sample_path):
    with pytest.raises(UserError, match="on_error must be"):
        read_dataset(sample_path, on_error="ignore")


def test_sample_dataset(sample_path):
    ds = read_dataset(sample_path, limit=20)
    assert len(ds) == 20
    assert ds.records[0].id.startswith("mp-")
    assert "formation_energy_per_atom" in ds.label_keys()


