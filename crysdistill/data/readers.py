"""Turn a path (or a JARVIS dataset name) into :class:`Record` objects.

Supported inputs:

* ``.jsonl`` / ``.jsonl.gz``: one JSON object per line with ``structure`` (a pymatgen dict or a
  CIF string) or ``cif``, an optional ``id`` and numeric labels (the format of ``../shared/data``);
* a folder of CIF/POSCAR files with an ``id_prop.csv`` (file id, then one or more targets; header
  optional), the CGCNN and ALIGNN convention;
* a single CIF or POSCAR file;
* a ``.json`` list of pymatgen structure dicts, of records as in the JSONL format, or of JARVIS
  entries (``atoms`` as a ``jarvis.core.atoms.Atoms`` dict);
* ``jarvis:<dataset>`` (e.g. ``jarvis:dft_3d``): downloaded through jarvis-tools (needs internet).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from crysdistill.data.records import DESCRIPTIVE_KEYS, Problem, Record, check_structure
from crysdistill.errors import RecordError, UserError

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".mcif")


@dataclass
class Dataset:
    """Records read from one source plus what was skipped.

    Attributes:
        source: the path or name that was read.
        records: the usable records, in file order.
        problems: records that were skipped (only with ``on_error="skip"``).
    """

    source: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def label_keys(self) -> list[str]:
        """Label keys present in at least one record, in first-seen order."""
        keys: dict[str, None] = {}
        for r in self.records:
            for k in r.labels:
                keys.setdefault(k, None)
        return list(keys)


def read_dataset(
    path: str | os.PathLike,
    on_error: str = "raise",
    min_distance: float = 0.5,
    limit: int | None = None,
) -> Dataset:
    """Read every record of ``path``.

    Args:
        path: file, folder or ``jarvis:<name>``.
        on_error: ``"raise"`` stops at the first bad record with a :class:`RecordError`;
            ``"skip"`` drops bad records and lists them in :attr:`Dataset.problems`.
        min_distance: atoms closer than this (Å) make a record bad.
        limit: read at most this many records (in file order).

    Raises:
        UserError: missing or unreadable path, empty dataset, or a bad record with ``on_error="raise"``.
    """
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    source = str(path)
    records: list[Record] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for item in _iter_raw(source):
        if limit is not None and len(records) >= limit:
            break
        if isinstance(item, Problem):
            if on_error == "raise":
                raise RecordError(item.record, item.reason)
            problems.append(item)
            continue
        try:
            check_structure(item.structure, item.name, min_distance)
            if item.id in seen:
                raise RecordError(item.name, f"duplicate id {item.id!r}", "ids must be unique within a dataset")
        except RecordError as exc:
            if on_error == "raise":
                raise
            problems.append(Problem(exc.record, exc.reason))
            continue
        seen.add(item.id)
        records.append(item)
    if not records:
        if problems:  # name what was skipped: the first record and its reason
            first = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{source}: no usable structures found: {first.record}: {first.reason}{more}")
        raise UserError(f"{source}: no usable structures found; check the path and format")
    return Dataset(source, records, problems)


# --------------------------------------------------------------------------------------------
# raw iteration: yields Record (not yet checked) or Problem (could not even be parsed)


def iter_raw(source: str) -> Iterator[Record | Problem]:
    """Stream the records of ``source`` one by one, without holding the dataset in memory.

    Yields unchecked :class:`Record` objects (run :func:`check_structure` on them) and a
    :class:`Problem` for each entry that could not be parsed at all.
    """
    return _iter_raw(source)


def _iter_raw(source: str) -> Iterator[Record | Problem]:
    if source.startswith("jarvis:"):
        yield from records_from_jarvis(_download_jarvis(source[len("jarvis:"):]), source)
        return
    p = Path(source)
    if not p.exists():
        raise UserError(f"{source}: no such file or directory; check the path")
    if p.is_dir():
        yield from _iter_folder(p)
        return
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        yield from _iter_jsonl(p)
    elif name.endswith((".json", ".json.gz")):
        yield from _iter_json(p)
    else:
        yield _read_structure_file(p, p.stem)


def _open_text(p: Path) -> io.TextIOBase:
    if p.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return open(p, encoding="utf-8")


def _iter_jsonl(p: Path) -> Iterator[Record | Problem]:
    try:
        with _open_text(p) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                origin = f"{p}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Problem(origin, f"not valid JSON ({exc.msg}); fix or delete this line")
                    continue
                yield _record_from_obj(obj, origin, default_id=f"{p.name}:{lineno}")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read file ({exc})") from None


def _iter_json(p: Path) -> Iterator[Record | Problem]:
    try:
        with _open_text(p) as fh:
            obj = json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: cannot read JSON ({exc})") from None
    if isinstance(obj, dict) and "@class" not in obj and "lattice" not in obj:
        obj = obj.get("data") or obj.get("structures") or [obj]
    if not isinstance(obj, list):
        obj = [obj]
    if obj and isinstance(obj[0], dict) and "atoms" in obj[0]:
        yield from records_from_jarvis(obj, str(p))
        return
    for k, item in enumerate(obj):
        origin = f"{p}[{k}]"
        if isinstance(item, dict) and ("structure" in item or "cif" in item):
            yield _record_from_obj(item, origin, default_id=f"{p.stem}-{k}")
        else:
            yield _record_from_obj({"structure": item}, origin, default_id=f"{p.stem}-{k}")


def _record_from_obj(obj: Any, origin: str, default_id: str) -> Record | Problem:
    if not isinstance(obj, dict):
        return Problem(origin, "expected a JSON object with a 'structure' key")
    rid = str(obj.get("id", obj.get("jid", default_id)))
    name = f"{origin} ({rid})"
    raw = obj.get("structure", obj.get("cif"))
    if raw is None:
        return Problem(name, "no 'structure' or 'cif' key")
    try:
        if isinstance(raw, str):
            structure = _parse_cif_string(raw)
        else:
            structure = Structure.from_dict(raw)
    except Exception as exc:  # pymatgen raises many types for malformed input
        return Problem(name, f"cannot parse structure ({type(exc).__name__}: {exc}); fix or remove this record")
    labels = _labels(obj, name)
    if isinstance(labels, Problem):
        return labels
    return Record(rid, structure, labels, origin)


def _labels(obj: dict, name: str) -> dict[str, float | None] | Problem:
    labels: dict[str, float | None] = {}
    for k, v in obj.items():
        if k in DESCRIPTIVE_KEYS or isinstance(v, (dict, list)):
            continue
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "na", "nan", "none", "null")):
            labels[k] = None
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)):
            labels[k] = float(v) if math.isfinite(v) else None
        else:
            try:
                f = float(v)
            except ValueError:
                continue  # free text (e.g. a formula or a note) is not a label
            labels[k] = f if math.isfinite(f) else None
    return labels


def _parse_cif_string(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser.from_str(text, occupancy_tolerance=1.0)
        structures = parser.parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise ValueError("no structure in CIF")
    return structures[0]


def _read_structure_file(p: Path, rid: str, labels: dict | None = None) -> Record | Problem:
    origin = str(p)
    try:
        if p.suffix.lower() in (".cif", ".mcif"):
            structure = _parse_cif_string(p.read_text(encoding="utf-8", errors="replace"))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_file(p)
    except FileNotFoundError:
        return Problem(origin, "file not found")
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return Problem(origin, f"cannot parse as CIF or POSCAR ({type(exc).__name__}{': ' + msg if msg else ''}); "
                               "fix the file or remove it")
    return Record(rid, structure, dict(labels or {}), origin)


def _iter_folder(folder: Path) -> Iterator[Record | Problem]:
    id_prop = folder / "id_prop.csv"
    if not id_prop.exists():
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in STRUCTURE_SUFFIXES or f.name.startswith("POSCAR"))
        if not files:
            raise UserError(f"{folder}: folder has no id_prop.csv and no CIF/POSCAR files")
        for f in files:
            yield _read_structure_file(f, f.stem)
        return
    with open(id_prop, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{id_prop}: empty file")
    header = _is_header(rows[0])
    if header:
        names = [c.strip() for c in rows[0][1:]]
        rows = rows[1:]
    else:
        names = ["target"] if len(rows[0]) == 2 else [f"target_{i}" for i in range(len(rows[0]) - 1)]
    for lineno, row in enumerate(rows, start=2 if header else 1):
        fid = row[0].strip()
        path = _find_structure_file(folder, fid)
        if path is None:
            yield Problem(
                f"{id_prop}:{lineno}",
                f"names {fid!r} but no file {fid}.cif, {fid}.vasp, {fid} or POSCAR-{fid} exists in {folder}",
            )
            continue
        labels: dict[str, float | None] = {}
        for k, v in zip(names, row[1:]):
            try:
                f = float(v)
                labels[k] = f if math.isfinite(f) else None
            except ValueError:
                labels[k] = None
        for k in names[len(row) - 1:]:
            labels[k] = None
        rid = Path(fid).stem if Path(fid).suffix.lower() in STRUCTURE_SUFFIXES else fid
        yield _read_structure_file(path, rid, labels)


def _is_header(row: list[str]) -> bool:
    for c in row[1:]:
        try:
            float(c)
        except ValueError:
            if c.strip().lower() not in ("", "na", "nan", "none", "null"):
                return True
    return False


def _find_structure_file(folder: Path, fid: str) -> Path | None:
    for cand in (fid, f"{fid}.cif", f"{fid}.vasp", f"{fid}.poscar", f"POSCAR-{fid}", f"POSCAR-{fid}.vasp"):
        p = folder / cand
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------------------------
# JARVIS


def records_from_jarvis(entries: Iterable[dict], source: str) -> Iterator[Record | Problem]:
    """Convert JARVIS dataset entries (dicts with an ``atoms`` key) into records.

    Args:
        entries: as returned by ``jarvis.db.figshare.data(name)`` or read from a JARVIS JSON file.
        source: name used in error messages.
    """
    from jarvis.core.atoms import Atoms

    for k, entry in enumerate(entries):
        rid = str(entry.get("jid", entry.get("id", f"{source}-{k}")))
        name = f"{source}[{k}] ({rid})"
        try:
            structure = Atoms.from_dict(entry["atoms"]).pymatgen_converter()
        except Exception as exc:
            yield Problem(name, f"cannot convert JARVIS atoms ({type(exc).__name__}: {exc})")
            continue
        labels = _labels(entry, name)
        if isinstance(labels, Problem):
            yield labels
            continue
        yield Record(rid, structure, labels, name)


def _download_jarvis(name: str) -> list[dict]:  # pragma: no cover - needs internet
    try:
        from jarvis.db.figshare import data
    except ImportError as exc:
        raise UserError(f"jarvis:{name}: jarvis-tools is not installed ({exc})") from None
    try:
        return data(name)
    except Exception as exc:
        raise UserError(
            f"jarvis:{name}: download failed ({type(exc).__name__}: {exc}); check the dataset name "
            "and your internet connection"
        ) from None
