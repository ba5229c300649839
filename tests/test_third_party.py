"""A student from another distribution, registered only through its entry point, end to end.

The test writes a small installed distribution into ``tmp_path`` (a module with a real adapter and
a ``.dist-info`` folder whose ``entry_points.txt`` is written with the ``entry_points_txt``
library), puts it on ``sys.path`` and then uses it exactly as a user would: it is listed with its
distribution and version, trained through the ``crysdistill train`` code path, and a broken plugin
next to it is reported without breaking anything else.
"""

from __future__ import annotations

import csv
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
from crysdistill.plugins import STUDENTS_GROUP, TEACHERS_GROUP
from crysdistill.students.checkpoint import load_student
from crysdistill.students.registry import get_student, list_students
from crysdistill.testing import TeacherConformance

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

TINY_TEACHER = '''
"""A tiny but real teacher: seeded element embeddings and one round of distance-weighted messages."""

import numpy as np
import torch
from torch import nn

from crysdistill.teachers.base import TeacherAdapter, TeacherOutput, TrainingData


class TinyTeacher(TeacherAdapter):
    name = "tinyteacher"
    default_variant = "v1"
    package = "crysdistill-tinyteacher"
    batch_size = 8

    def load(self):
        torch.manual_seed(7)
        self.net = nn.ModuleDict({"embed": nn.Embedding(100, 12), "mix": nn.Linear(12, 12)})

    @property
    def module(self):
        return self.net

    @property
    def layer_names(self):
        return ["embed", "message"]

    @property
    def layer_widths(self):
        return [12, 12]

    @property
    def training(self):
        return TrainingData("nothing (random weights)", (), ("tiny_label",))

    def check(self, structure):
        if (structure.get_neighbor_list(5.0)[0].size == 0) or len(set(structure.get_neighbor_list(5.0)[0])) < len(structure):
            return "an atom has no neighbour within 5 Å"
        return None

    def embed(self, structures):
        h0s, h1s, sizes = [], [], []
        with torch.no_grad():
            for s in structures:
                z = torch.as_tensor(np.asarray(s.atomic_numbers) - 1)
                h0 = self.net["embed"](z)
                c, n, _, d = s.get_neighbor_list(5.0)
                w = torch.as_tensor(np.exp(-d), dtype=torch.float32).unsqueeze(1)
                msg = torch.zeros_like(h0).index_add_(0, torch.as_tensor(c), w * h0[torch.as_tensor(n)])
                h0s.append(h0)
                h1s.append(torch.tanh(self.net["mix"](h0 + msg)))
                sizes.append(len(s))
        return TeacherOutput([torch.cat(h0s), torch.cat(h1s)], torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)])))
'''

BROKEN_MODULE = 'raise ImportError("crysdistill_brokenstudent needs the missing package frobnicate")\n'


def _write_distribution(root: Path, dist: str, version: str, module: str, source: str, name: str, attr: str,
                        group: str = STUDENTS_GROUP) -> None:
    """An installed distribution: ``module.py`` plus ``<dist>-<version>.dist-info`` with its entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = {group: {name: entry_points_txt.EntryPoint(group, name, module, attr, ())}}
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
    _write_distribution(site, "crysdistill-tinyteacher", "0.2", "crysdistill_tinyteacher", TINY_TEACHER,
                        "tinyteacher", "TinyTeacher", group=TEACHERS_GROUP)
    _write_distribution(site, "crysdistill-brokenteacher", "0.1", "crysdistill_brokenteacher",
                        'raise ImportError("crysdistill_brokenteacher needs the missing package quux")\n',
                        "brokenteacher", "BrokenTeacher", group=TEACHERS_GROUP)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CRYSDISTILL_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    yield site
    for module in ("crysdistill_tinystudent", "crysdistill_brokenstudent", "crysdistill_tinyteacher",
                   "crysdistill_brokenteacher"):
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


class TestTinyTeacherConformance(TeacherConformance):
    """A third party's teacher gets the same conformance tests as the built-ins."""

    teacher = "tinyteacher"

    @pytest.fixture(scope="class")
    def loaded(self, tmp_path_factory):
        from crysdistill.teachers.registry import load_teacher

        site = tmp_path_factory.mktemp("teacher-site")
        _write_distribution(site, "crysdistill-tinyteacher", "0.2", "crysdistill_tinyteacher", TINY_TEACHER,
                            "tinyteacher", "TinyTeacher", group=TEACHERS_GROUP)
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        yield load_teacher("tinyteacher")
        sys.path.remove(str(site))
        sys.modules.pop("crysdistill_tinyteacher", None)
        importlib.invalidate_caches()


def test_third_party_teacher_is_listed_next_to_a_broken_one(plugins, capsys) -> None:
    from crysdistill.teachers.registry import list_teachers

    infos = {i.name: i for i in list_teachers()}
    tiny = infos["tinyteacher"]
    assert (tiny.distribution, tiny.version, tiny.error) == ("crysdistill-tinyteacher", "0.2", None)
    assert "quux" in infos["brokenteacher"].error
    assert main(["teacher", "list"]) == 0
    out, err = capsys.readouterr()
    assert "tinyteacher" in out and "crysdistill-tinyteacher 0.2" in out and "2 × 12" in out
    assert "chgnet" in out and "sevennet" in out
    assert "warning: teacher 'brokenteacher'" in err and "quux" in err and "Traceback" not in err
    assert main(["train", "--student", "cgcnn", "--teacher", "brokenteacher", "--data", "sample", "--target",
                 "formation_energy_per_atom", "--out", "unused"]) == 2
    assert "brokenteacher" in capsys.readouterr().err


def test_third_party_teacher_distils_and_injects_through_the_cli(plugins, tmp_path, capsys) -> None:
    """Distillation (node loss) and injection from a teacher of another distribution, then predict."""
    sample = resources.files("crysdistill") / "data" / "sample" / "mp_eform_flla2015_sample.jsonl.gz"
    common = ["train", "--student", "cgcnn", "--teacher", "tinyteacher", "--data", str(sample), "--target",
              "formation_energy_per_atom", "--train-size", "40", "--val-size", "20", "--test-size", "20",
              "--epochs", "2", "--seed", "0", "model.width=16", "model.layers=2"]
    assert main(common + ["--out", str(tmp_path / "d"), "distill.node_weight=0.5", "distill.teacher_layers=[0,1]"]) == 0
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["teacher"] == "tinyteacher" and s["distill_weight"] == 0.5 and math.isfinite(s["test_mae"])
    rows = list(csv.DictReader(open(tmp_path / "d" / "metrics.csv")))
    assert float(rows[0]["train_distill_node"]) > 0  # the node distillation term was on
    assert main(common + ["--out", str(tmp_path / "i"), "distill.node_weight=0", "distill.inject_layers=[0,1]"]) == 0
    s = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert s["inject_layers"] == [0, 1] and s["teacher_trained_on"]["dataset"] == "nothing (random weights)"
    assert main(["predict", "--checkpoint", str(tmp_path / "i" / "best.pt"), "--data", str(sample), "--limit", "30",
                 "-o", str(tmp_path / "p.csv")]) == 0
    assert "predicted 30 structure(s)" in capsys.readouterr().out
