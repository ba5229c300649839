"""A student from another distribution, registered only through its entry point, end to end.

The test writes a small installed distribution into ``tmp_path`` (a module with a real adapter and
a ``.dist-info`` folder whose ``entry_points.txt`` is written with the ``entry_points_txt``
library), puts it on ``sys.path`` and then uses it exactly as a user would: it is listed with its
distribution and version, trained through the ``crysdistill train`` code path, and a broken plugin
next to it is reported without breaking anything else.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import textwrap
from importlib import resources
from pathlib import Path

import entry_points_txt
import pytest

from crysdistill.cli import main
from crysdistill.errors import UserError
from crysdistill.plugins import STUDENTS_GROUP
from crysdistill.students.checkpoint import load_student
from crysdistill.students.registry import get_student, list_students

TINY_MODULE = '''
"""A tiny but real student: a 2-layer MLP on mean-pooled embedded atom features."""

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from crysdistill.data.batch import collate
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.students.base import StudentAdapter, StudentOutput


class TinyStudent(StudentAdapter):
    name = "tinystudent"

    @classmethod
    def default_config(cls):
        return {"width": 16, "cutoff": 6.0}

    def _settings(self):
        return GraphSettings(cutoff=float(self.config["cutoff"]), symmetry=False)

    def build(self):
        width = int(self.config["width"])
        self.embed = nn.Linear(self._settings().atom_feature_dim, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.Softplus(), nn.Linear(width, self.n_targets))

    @property
    def embedding_dim(self):
        return int(self.config["width"])

    def featurizer(self):
        return CrystalGraphFeaturizer(self._settings())

    def collate(self, graphs, extra_atom_features=None):
        return collate(graphs, self._settings())

    def forward(self, batch):
        h = F.softplus(self.embed(batch.x))
        pooled = scatter(h, batch.batch, dim=0, dim_size=int(batch.num_graphs), reduce="mean")
        return StudentOutput(self.mlp(pooled), h, batch.site_id, batch.batch, pooled)
'''

BROKEN_MODULE = 'raise ImportError("crysdistill_brokenstudent needs the missing package frobnicate")\n'


def _write_distribution(root: Path, dist: str, version: str, module: str, source: str, name: str, attr: str) -> None:
    """An installed distribution: ``module.py`` plus ``<dist>-<version>.dist-info`` with its entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = {STUDENTS_GROUP: {name: entry_points_txt.EntryPoint(STUDENTS_GROUP, name, module, attr, ())}}
    with (info / "entry_points.txt").open("w") as fh:
        entry_points_txt.dump(eps, fh)


@pytest.fixture
def plugins(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _write_distribution(site, "crysdistill-tinystudent", "0.1", "crysdistill_tinystudent", TINY_MODULE,
                        "tinystudent", "TinyStudent")
    _write_distribution(site, "crysdistill-brokenstudent", "0.3", "crysdistill_brokenstudent", BROKEN_MODULE,
                        "brokenstudent", "BrokenStudent")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CRYSDISTILL_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    yield site
    for module in ("crysdistill_tinystudent", "crysdistill_brokenstudent"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_entry_points_file_is_the_standard_format(plugins) -> None:
    text = (plugins / "crysdistill_tinystudent-0.1.dist-info" / "entry_points.txt").read_text()
    assert "[crysdistill.students]" in text and "tinystudent = crysdistill_tinystudent:TinyStudent" in text
    assert entry_points_txt.loads(text)[STUDENTS_GROUP]["tinystudent"].module == "crysdistill_tinystudent"


def test_listed_with_distribution_and_version_next_to_a_broken_plugin(plugins) -> None:
    infos = {i.name: i for i in list_students(try_load=True)}
    tiny = infos["tinystudent"]
    assert (tiny.distribution, tiny.version, tiny.error) == ("crysdistill-tinystudent", "0.1", None)
    assert tiny.value == "crysdistill_tinystudent:TinyStudent"
    broken = infos["brokenstudent"]
    assert broken.distribution == "crysdistill-brokenstudent" and broken.version == "0.3"
    assert broken.error is not None and "ImportError" in broken.error and "frobnicate" in broken.error
    for builtin in ("cgcnn", "gatgnn", "deepergatgnn", "alignn"):
        assert infos[builtin].error is None, f"{builtin}: {infos[builtin].error}"
        assert infos[builtin].distribution == "crysdistill"
    # listing without loading reads only metadata: nothing is imported, nothing fails
    assert all(i.error is None for i in list_students(try_load=False))
    with pytest.raises(UserError, match="brokenstudent.*failed to load.*frobnicate"):
        get_student("brokenstudent")


def test_unknown_student_lists_installed_names(plugins) -> None:
    with pytest.raises(UserError) as info:
        get_student("no-such-student")
    msg = str(info.value)
    assert "no-such-student" in msg and "\n" not in msg
    for name in ("alignn", "cgcnn", "deepergatgnn", "gatgnn", "tinystudent"):
        assert name in msg


def test_third_party_student_trains_through_the_cli(plugins, tmp_path) -> None:
    sample = resources.files("crysdistill") / "data" / "sample" / "mp_eform_flla2015_sample.jsonl.gz"
    out = tmp_path / "run"
    code = main(["train", "--student", "tinystudent", "--data", str(sample), "--target", "formation_energy_per_atom",
                 "--train-size", "40", "--val-size", "20", "--test-size", "20", "--epochs", "2", "--seed", "0",
                 "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student"] == "tinystudent" and summary["n_test"] == 20
    assert math.isfinite(summary["test_mae"]) and summary["test_mae"] > 0
    # the best checkpoint rebuilds the plugin's class through the registry
    student, _ = load_student(out / "best.pt")
    assert type(student).__module__ == "crysdistill_tinystudent" and student.name == "tinystudent"
