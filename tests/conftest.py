"""Shared fixtures: small crystals built in code, fixture files, and an isolated graph cache.

Every test session gets its own ``CRYSDISTILL_CACHE`` (a temporary folder), so tests never touch
the user's cache. Fixtures here are generic; any test module of the project may use them.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: Lattice constants (Å) of the structures below.
NACL_A = 5.64
CU_A = 3.615


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``CRYSDISTILL_CACHE`` at a fresh folder for the whole session."""
    old = os.environ.get("CRYSDISTILL_CACHE")
    path = tmp_path_factory.mktemp("crysdistill-cache")
    os.environ["CRYSDISTILL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CRYSDISTILL_CACHE", None)
    else:
        os.environ["CRYSDISTILL_CACHE"] = old


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """An empty graph-cache folder for one test."""
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: small CIF and JARVIS files."""
    return FIXTURES


@pytest.fixture
def nacl() -> Structure:
    """Conventional rock-salt NaCl, a = 5.64 Å, 8 sites (Na at 0–3, Cl at 4–7), space group 225."""
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    cl = [[(x + 0.5) % 1, y, z] for x, y, z in fcc]
    return Structure(Lattice.cubic(NACL_A), ["Na"] * 4 + ["Cl"] * 4, fcc + cl)


@pytest.fixture
def cu_primitive() -> Structure:
    """Primitive fcc Cu, a = 3.615 Å: one site, twelve nearest neighbours at a/√2, all images of itself."""
    h = CU_A / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Cu"], [[0, 0, 0]])


@pytest.fixture
def triclinic() -> Structure:
    """A P1 cell with four atoms in general positions (space group 1, triclinic)."""
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 71.0, 83.0, 97.0)
    return Structure(lattice, ["Si", "O", "O", "Mg"],
                     [[0.02, 0.05, 0.11], [0.37, 0.21, 0.44], [0.61, 0.73, 0.19], [0.83, 0.42, 0.77]])


@pytest.fixture
def small_structures(nacl: Structure, cu_primitive: Structure, triclinic: Structure) -> list[Structure]:
    """A few different, valid structures (NaCl, Cu, P1 cell, primitive Si diamond, a distorted NaCl)."""
    h = 5.43 / 2
    si = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    shifted = nacl.copy()
    shifted.translate_sites([0], [0.01, 0.02, 0.0])
    return [nacl, cu_primitive, triclinic, si, shifted]


@pytest.fixture(scope="session")
def sample_path() -> Path:
    """The bundled sample dataset (400 Materials Project structures with formation energies)."""
    from crysdistill.cli.common import sample_path as _sample_path

    return _sample_path()


@pytest.fixture
def write_jsonl() -> Callable[[Path, Iterable[dict | str]], Path]:
    """Write rows (dicts, or raw strings written as they are) as JSON Lines; gzip if the name ends ``.gz``."""

    def write(path: Path, rows: Iterable[dict | str]) -> Path:
        text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
        if path.name.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write



@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small saved, untrained teacher (2 convolutions of width 16, seeded weights)."""
    import torch

    from crysdistill.data.graph import GraphSettings
    from crysdistill.teacher.checkpoint import save_teacher
    from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_teacher(path, CrysGNNEncoder(EncoderConfig(width=16, layers=2)), GraphSettings())
    return path


@pytest.fixture(scope="session")
def teacher(teacher_path: Path):
    """:func:`teacher_path`, loaded (frozen, evaluation mode)."""
    from crysdistill.teacher.checkpoint import load_teacher

    return load_teacher(teacher_path)


@pytest.fixture(scope="session")
def sample_teacher_graphs(teacher, sample_path: Path):
    """The teacher's graphs of the first 200 structures of the bundled sample."""
    from crysdistill.data.readers import read_dataset
    from crysdistill.teacher.probe import teacher_graphs

    return teacher_graphs(teacher, read_dataset(sample_path, limit=200))


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run the real ``crysdistill`` entry point: ``run_cli("data", "inspect", …) -> (code, stdout, stderr)``."""
    from crysdistill.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
