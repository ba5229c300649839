"""``crysdistill pretrain | teacher info | teacher eval | embed``: outputs and one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crysdistill.cli import main
from crysdistill.teacher.checkpoint import DEFAULT_TEACHER_PATH, heads_path, load_teacher

TINY = ["batch_size=16", "loader_workers=0", "threads=1", "centroid_structures=16", "val_fraction=0.2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["pretrain", "--data", "sample", "--limit", "40", "--workers", "1", "--out", str(out),
                 "--epochs", "1", "--seed", "3", *TINY]) == 0
    return out


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit code 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crysdistill: error: ") and "Traceback" not in err[0]
    return err[0]


def test_info(run: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = load_teacher(run / "teacher.pt")
    assert main(["teacher", "info", str(run / "teacher.pt")]) == 0
    text = capsys.readouterr().out
    assert teacher.fingerprint in text and "CrysGNN 5 × 64" in text and "connectivity" in text
    assert main(["teacher", "info", str(run / "teacher.pt"), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["parameters"] == sum(p.numel() for p in teacher.encoder.parameters())
    assert desc["heads"] == str(heads_path(run / "teacher.pt"))
    assert json.loads((run / "config.json").read_text())["seed"] == 3


def test_eval_json(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["teacher", "eval", str(run / "teacher.pt"), "--data", "sample", "--limit", "30", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_structures"] == 30
    for key in ("space_group_top1", "space_group_top5", "crystal_system_accuracy", "connectivity_accuracy",
                "feature_accuracy", "baseline_space_group_top1", "baseline_connectivity_accuracy",
                "baseline_feature_accuracy", "baseline_crystal_system_accuracy"):
        assert 0 <= res[key] <= 1, key
    assert res["space_group_top1"] <= res["space_group_top5"]
    # deterministic: the same sampled pairs every call
    assert main(["teacher", "eval", str(run / "teacher.pt"), "--data", "sample", "--limit", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == res
    assert main(["teacher", "eval", str(run / "teacher.pt"), "--data", "sample", "--limit", "30"]) == 0
    assert "space group top-5" in capsys.readouterr().out


def test_embed(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "emb.npz"
    assert main(["embed", "--teacher", str(run / "teacher.pt"), "--data", "sample", "--limit", "6",
                 "-o", str(out), "--layers", "0,5"]) == 0
    z = np.load(out)
    n_atoms = int(z["offsets"][-1])
    assert z["ids"].shape == (6,) and z["graph"].shape == (6, 128) and z["node"].shape == (n_atoms, 128)
    assert list(z["layers"]) == [0, 5] and str(z["teacher_fingerprint"]) == load_teacher(run / "teacher.pt").fingerprint
    # the last layer block equals the encoder's normalised node output; graph = mean over atoms
    from crysdistill.data.batch import collate
    from crysdistill.teacher.data import stream_graphs

    teacher = load_teacher(run / "teacher.pt")
    from crysdistill.cli.common import sample_path

    graphs = stream_graphs(str(sample_path()), teacher.graph_settings, limit=6)
    node = teacher.encoder(collate([graphs[i] for i in range(6)], teacher.graph_settings)).node
    assert np.allclose(z["node"][:, 64:], node.numpy(), atol=1e-5)
    a, b = z["offsets"][2], z["offsets"][3]
    assert np.allclose(z["graph"][2], z["node"][a:b].mean(axis=0), atol=1e-5)
    assert main(["embed", "--teacher", str(run / "teacher.pt"), "--data", "sample", "--limit", "2",
                 "-o", str(tmp_path / "last")]) == 0
    assert np.load(tmp_path / "last.npz")["graph"].shape == (2, 64)


def test_default_teacher(capsys: pytest.CaptureFixture) -> None:
    code = main(["teacher", "info", "default"])
    if DEFAULT_TEACHER_PATH.is_file():
        assert code == 0 and "teacher-default.pt" in capsys.readouterr().out
    else:
        assert code == 2 and "default teacher is not installed" in capsys.readouterr().err


@pytest.mark.skipif(not DEFAULT_TEACHER_PATH.is_file(), reason="no teachers installed")
def test_shipped_teachers_load_and_evaluate(capsys: pytest.CaptureFixture) -> None:
    """The shipped teachers, the default (bond angles, two head options), CrysGNN's as published
    and the one that also learnt formation energy, evaluate with their own heads, each built from
    the options it recorded."""
    from crysdistill.teacher.checkpoint import bundled_teachers

    assert {"default", "crysgnn", "mp-eform"} <= set(bundled_teachers())
    angles = {"default": 8, "crysgnn": 0, "mp-eform": 8}
    for name, orders in angles.items():
        assert load_teacher(name).encoder.config.angular_orders == orders
        assert main(["teacher", "eval", name, "--data", "sample", "--limit", "12", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["n_structures"] == 12 and 0 <= res["space_group_top1"] <= res["space_group_top5"] <= 1
        # the teacher that learnt formation energy predicts it (sample: MP formation energies)
        assert ("property_mae" in res) == (name == "mp-eform")
    assert res["property_mae"] < 0.5 * res["baseline_property_mae"]


def test_bad_inputs(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no usable structures" in error_line(capsys, ["pretrain", "--data", str(empty), "--out", str(tmp_path / "x")])
    assert "not a teacher" in error_line(capsys, ["teacher", "info", str(run / "last.pt")])
    assert "not a teacher" in error_line(capsys, ["teacher", "eval", str(run / "teacher.heads.pt"), "--data", "sample"])
    assert "checkpoint not found" in error_line(capsys, ["teacher", "info", str(tmp_path / "nope.pt")])
    line = error_line(capsys, ["teacher", "info", "nosuch"])
    assert "unknown teacher 'nosuch'" in line and "chgnet" in line and "default, mp-eform" in line
    line = error_line(capsys, ["teacher", "eval", str(run / "teacher.pt"), "--data", "sample", "graph.cutoff=6"])
    assert "another featuriser" in line and "cutoff" in line
    line = error_line(capsys, ["embed", "--teacher", str(run / "teacher.pt"), "--data", "sample", "-o",
                               str(tmp_path / "e.npz"), "graph.max_neighbors=8"])
    assert "another featuriser" in line
    assert "nothing to resume" in error_line(
        capsys, ["pretrain", "--data", "sample", "--out", str(tmp_path / "missing"), "--resume"])
    assert "layer 9 does not exist" in error_line(
        capsys, ["embed", "--teacher", str(run / "teacher.pt"), "--data", "sample", "--limit", "2", "-o",
                 str(tmp_path / "e.npz"), "--layers", "9"])
    assert "comma-separated integers" in error_line(
        capsys, ["embed", "--teacher", str(run / "teacher.pt"), "--data", "sample", "-o", str(tmp_path / "e.npz"),
                 "--layers", "last"])


def test_heads_of_another_teacher_are_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "teacher.pt"
    shutil.copy(run / "teacher.pt", other)
    shutil.copy(run / "teacher.heads.pt", heads_path(other))
    ckpt = torch.load(other, weights_only=True)
    ckpt["state_dict"]["embedding.weight"] += 1.0
    from crysdistill.teacher.checkpoint import save_teacher
    from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig

    enc = CrysGNNEncoder(EncoderConfig(**ckpt["encoder_config"]))
    enc.load_state_dict(ckpt["state_dict"])
    save_teacher(other, enc, load_teacher(run / "teacher.pt").graph_settings)
    assert "belong to teacher" in error_line(capsys, ["teacher", "eval", str(other), "--data", "sample"])
    shutil.move(heads_path(other), tmp_path / "elsewhere.pt")
    assert "heads" in error_line(capsys, ["teacher", "eval", str(other), "--data", "sample"])


def test_eval_on_the_held_out_split(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, write_jsonl,
                                    small_structures) -> None:
    """``teacher eval --split val`` evaluates exactly the structures pretraining held out, reading the
    run's split.json and its recorded corpus; a wrong or missing split is one line."""
    from crysdistill.teacher.checkpoint import load_split

    split = json.loads((run / "split.json").read_text())
    assert main(["teacher", "eval", str(run / "teacher.pt"), "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_structures"] == split["n_val"] == 8
    assert main(["teacher", "eval", str(run / "teacher.pt"), "--split", "val", "--data", "sample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == res
    # the shipped teacher ships its split: the 2,120 structures of the corpus it never trained on
    shipped = load_split(load_teacher("default"))
    assert len(shipped["val_keys"]) == shipped["n_val"] == 2120
    assert "needs --data (or --split val" in error_line(capsys, ["teacher", "eval", str(run / "teacher.pt")])
    other = tmp_path / "data.jsonl"
    write_jsonl(other, [{"id": f"s{i}", "structure": s.as_dict()} for i, s in enumerate(small_structures)])
    assert "holds none of the 8 structures held out" in error_line(
        capsys, ["teacher", "eval", str(run / "teacher.pt"), "--split", "val", "--data", str(other)])
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "teacher.pt", alone / "teacher.pt")
    shutil.copy(run / "teacher.heads.pt", alone / "teacher.heads.pt")
    assert "no split.json beside the teacher" in error_line(
        capsys, ["teacher", "eval", str(alone / "teacher.pt"), "--split", "val"])
    (alone / "split.json").write_text(json.dumps({**split, "data": str(tmp_path / "moved.jsonl.gz")}))
    line = error_line(capsys, ["teacher", "eval", str(alone / "teacher.pt"), "--split", "val"])
    assert "moved.jsonl.gz" in line and "the corpus recorded in" in line and "pass --data" in line
    (alone / "split.json").write_text(json.dumps({**split, "data_fingerprint": "0123456789abcdef"}))
    assert "belongs to another pretraining run" in error_line(
        capsys, ["teacher", "eval", str(alone / "teacher.pt"), "--split", "val"])
