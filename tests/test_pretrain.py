"""Pretraining end to end on a slice of the bundled sample: run folder, checkpoints, resume, DDP."""

from __future__ import annotations

import csv
import gzip
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from crysdistill.errors import ConfigError, UserError
from crysdistill.teacher.checkpoint import heads_path, load_heads, load_teacher
from crysdistill.teacher.pretrain import PretrainConfig, load_pretrain_config, lr_lambda, pretrain
from crysdistill.utils import load_checkpoint

#: tiny, fast runs: 40 structures, batches of 16, no loader processes, one thread
TINY = ["batch_size=16", "loader_workers=0", "threads=1", "centroid_structures=16", "val_fraction=0.2"]


def tiny_config(**extra) -> PretrainConfig:
    return load_pretrain_config(None, TINY, extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    """A 2-epoch run on the first 40 structures of the sample."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain(tiny_config(epochs=2), str(sample_path), out, workers=1, limit=40, progress=False)
    return out


def test_run_folder(tiny_run: Path) -> None:
    for name in ("teacher.pt", "teacher.heads.pt", "last.pt", "metrics.csv", "split.json", "config.json"):
        assert (tiny_run / name).is_file(), name
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for task in ("node_features", "connectivity", "space_group", "crystal_system"):
        for part in ("train", "val"):
            assert 0 <= float(rows[-1][f"{part}_{task}_acc"]) <= 1
            assert float(rows[-1][f"{part}_{task}_loss"]) >= 0
    split = json.loads((tiny_run / "split.json").read_text())
    assert split["n_train"] == 32 and split["n_val"] == 8 and len(split["val_ids"]) == 8


def test_teacher_checkpoint_round_trip(tiny_run: Path) -> None:
    teacher = load_teacher(tiny_run / "teacher.pt")
    assert not teacher.encoder.training
    assert not any(p.requires_grad for p in teacher.encoder.parameters())
    assert set(teacher.meta["tasks"]) == {"node_features", "connectivity", "space_group", "crystal_system"}
    assert teacher.meta["metrics"]["loss"] > 0 and teacher.meta["data_fingerprint"]
    ckpt = load_checkpoint(tiny_run / "teacher.pt")
    assert not any(k.startswith("tasks.") for k in ckpt["state_dict"])  # encoder only
    heads = load_heads(teacher)
    assert heads["train_stats"]["centroids"].shape == (7, 64)
    assert set(heads["heads"]) == set(teacher.meta["tasks"])
    # the best-validation teacher equals the encoder in last.pt when the last epoch was the best
    state = load_checkpoint(tiny_run / "last.pt")
    if state["best_val"] == teacher.meta["metrics"]["loss"]:
        enc = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        assert all(torch.equal(enc[k], v) for k, v in ckpt["state_dict"].items())


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tmp_path: Path, sample_path: Path, tiny_run: Path) -> None:
    """A 2-epoch run killed after epoch 1 and resumed ends with the same weights as an uninterrupted one."""
    from crysdistill.teacher.data import stream_graphs
    from crysdistill.teacher.pretrain import Dist, Trainer

    out = tmp_path / "resumed"
    out.mkdir()
    config = tiny_config(epochs=2)
    trainer = Trainer(config, stream_graphs(str(sample_path), config.graph, limit=40), out, Dist())

    def interrupt(epoch: int, row: dict) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        trainer.fit(interrupt)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    pretrain(None, str(sample_path), out, resume=True, workers=1, limit=40, progress=False)
    a = load_checkpoint(tiny_run / "last.pt")["model"]
    b = load_checkpoint(out / "last.pt")["model"]
    bad = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not bad, bad
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_resume_and_restart_errors(tmp_path: Path, sample_path: Path, tiny_run: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume"):
        pretrain(tiny_config(), str(sample_path), tmp_path / "missing", resume=True)
    with pytest.raises(UserError, match="already holds a run"):
        pretrain(tiny_config(), str(sample_path), tiny_run)
    with pytest.raises(UserError, match="other data"):
        pretrain(None, str(sample_path), tiny_run, resume=True, epochs=3, limit=30, workers=1)


def test_config_validation() -> None:
    cfg = load_pretrain_config(None, ["tasks.space_group.weight=0", "optim.lr=0.001"])
    assert set(cfg.active_tasks()) == {"node_features", "connectivity", "crystal_system"}
    assert cfg.optim.lr == 0.001
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_pretrain_config(None, ["batchsize=3"])
    with pytest.raises(ConfigError, match="must match the graph"):
        load_pretrain_config(None, ["graph.cutoff=6"])
    with pytest.raises(ConfigError, match="angular_orders must be a non-negative integer"):
        load_pretrain_config(None, ["encoder.angular_orders=-2"])
    # a bad pretext option or task name fails with the config, before any structure is read
    with pytest.raises(ConfigError, match="did you mean 'projection'"):
        load_pretrain_config(None, ["tasks.crystal_system.options.projecton=64"])
    with pytest.raises(UserError, match="unknown pretext task .masked_atm.; installed: "):
        load_pretrain_config(None, ["tasks.masked_atm.weight=0.2"])
    with pytest.raises(ConfigError, match="at least one pretext task"):
        load_pretrain_config(None, [f"tasks.{t}.weight=0" for t in PretrainConfig().tasks])
    repo_yaml = Path(__file__).resolve().parent.parent / "configs" / "pretrain.yaml"
    default = load_pretrain_config(repo_yaml)
    assert default.optim == PretrainConfig().optim and default.encoder == PretrainConfig().encoder
    assert (default.encoder.angular_orders, default.tasks["space_group"]["options"]["hidden"],
            default.tasks["crystal_system"]["options"]["projection"]) == (8, 256, 64)
    # configs/crysgnn.yaml is CrysGNN as published: distances only, a linear head, contrast on the embedding
    crysgnn = load_pretrain_config(repo_yaml.with_name("crysgnn.yaml"), ["encoder.layers=3"])
    assert (crysgnn.encoder.angular_orders, crysgnn.encoder.layers) == (0, 3)
    assert crysgnn.tasks["space_group"]["options"] == {"hidden": 0}
    assert crysgnn.tasks["crystal_system"]["options"] == {"projection": 0}
    # a run stored before these defaults changed resumes with what it had (the encoder's own default)
    from crysdistill.config import from_dict

    old = from_dict(PretrainConfig, {"encoder": {"width": 64, "layers": 5}, "tasks": {"space_group": {"weight": 1}}})
    assert old.encoder.angular_orders == 0


def test_schedule_warmup_then_cosine() -> None:
    lrs = [lr_lambda(s, 10, 110, 0.02) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.02, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CRYSDISTILL_CACHE=os.environ["CRYSDISTILL_CACHE"])
    import torch.distributed as dist

    from crysdistill.teacher.data import stream_graphs
    from crysdistill.teacher.pretrain import Trainer, setup_distributed

    d = setup_distributed()
    config = tiny_config(epochs=1)
    graphs = stream_graphs(data, config.graph, workers=1, limit=24)
    trainer = Trainer(config, graphs, Path(out), d)
    Path(out).mkdir(exist_ok=True)
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path: Path, sample_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(sample_path), str(out)), nprocs=2, join=True)
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(a[k], b[k]) for k in params)
    assert (out / "teacher.pt").is_file() and heads_path(out / "teacher.pt").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1  # one writer (rank 0), metrics reduced over both processes


def test_stream_graphs_matches_build_graphs(sample_path: Path, tmp_path: Path, write_jsonl) -> None:
    """Chunked streaming gives the graphs of read_dataset + build_graphs; bad records are counted."""
    import gzip

    from crysdistill.data import CrystalGraphFeaturizer, build_graphs, read_dataset
    from crysdistill.teacher.data import stream_graphs

    rows = [json.loads(line) for line, _ in zip(gzip.open(sample_path, "rt"), range(7))]
    rows.insert(3, {"id": "broken", "structure": {"lattice": "nonsense"}})
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    streamed = stream_graphs(str(data), PretrainConfig().graph, tmp_path / "c", workers=1, on_error="skip", chunk=3)
    ds = read_dataset(data, on_error="skip")
    built = build_graphs(ds.records, CrystalGraphFeaturizer(PretrainConfig().graph), tmp_path / "c")
    assert streamed.keys == built.keys and streamed.ids == built.ids
    assert [p.record for p in streamed.problems] == [p.record for p in ds.problems] and len(streamed.problems) == 1
    with pytest.raises(UserError, match="broken"):
        stream_graphs(str(data), PretrainConfig().graph, tmp_path / "c", workers=1, on_error="raise")


def test_optional_tasks_train_and_evaluate(tmp_path: Path, sample_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The three plug-in tasks beside CrysGNN's four: a run records their metrics and the teacher
    still evaluates (its CrysGNN heads) and embeds."""
    from crysdistill.cli import main

    extra = ["tasks.masked_atom.weight=0.2", "tasks.masked_edge.weight=0.2", "tasks.perturbation.weight=0.2",
             "tasks.perturbation.options.loss=nt_xent"]
    out = tmp_path / "run"
    pretrain(load_pretrain_config(None, [*TINY, *extra], {"epochs": 1}), str(sample_path), out, workers=1,
             limit=40, progress=False)
    row = list(csv.DictReader(open(out / "metrics.csv")))[-1]
    for task in ("masked_atom", "masked_edge", "perturbation"):
        assert float(row[f"train_{task}_loss"]) > 0 and 0 <= float(row[f"val_{task}_acc"]) <= 1
    teacher = load_teacher(out / "teacher.pt")
    assert {"masked_atom", "masked_edge", "perturbation"} <= set(teacher.meta["tasks"])
    capsys.readouterr()
    assert main(["teacher", "eval", str(out / "teacher.pt"), "--data", str(sample_path), "--limit", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_structures"] == 20 and 0 <= res["space_group_top1"] <= 1


def test_property_task_trains_and_evaluates(tmp_path: Path, sample_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Supervised pretraining on a labelled corpus: the run records the label's MAE, ``teacher
    eval`` reports it beside the best constant's, and a label the corpus lacks is one clear line
    naming the labels it has."""
    from crysdistill.cli import main

    extra = ["tasks.property.weight=1", "tasks.property.options.label=formation_energy_per_atom",
             "tasks.property.options.shift=-1.5"]
    out = tmp_path / "run"
    pretrain(load_pretrain_config(None, [*TINY, *extra], {"epochs": 2}), str(sample_path), out, workers=1,
             limit=40, progress=False)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert all(0 < float(r["val_property_mae"]) < 5 for r in rows)
    assert rows[-1]["val_property_acc"] in ("nan", "")  # a regression task has no accuracy
    capsys.readouterr()
    assert main(["teacher", "eval", str(out / "teacher.pt"), "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_structures"] == 8 and res["property_mae"] > 0 and res["baseline_property_mae"] > 0
    assert "property_accuracy" not in res
    assert main(["teacher", "eval", str(out / "teacher.pt"), "--split", "val"]) == 0
    assert "property" in capsys.readouterr().out.split("mean absolute error")[1]

    bad = load_pretrain_config(None, [*TINY, "tasks.property.options.label=band_gap"], {"epochs": 1})
    with pytest.raises(UserError, match=r"no structure has the label 'band_gap'.*formation_energy_per_atom"):
        pretrain(bad, str(sample_path), tmp_path / "bad", workers=1, limit=40, progress=False)


def test_a_label_absent_from_the_first_records_is_warned_about_before_featurising(
        tmp_path: Path, sample_path: Path, write_jsonl, caplog: pytest.LogCaptureFixture) -> None:
    """The first chunk read without the label a task reads gives a warning before its graphs are
    built; labelled records later in the corpus still count (the run does not stop). A corpus that
    fits in one chunk without the label stops before any graph is built."""
    from crysdistill.data.graph import GraphSettings
    from crysdistill.teacher.data import check_labels, stream_graphs

    with gzip.open(sample_path, "rt") as fh:
        rows = [json.loads(line) for line in fh][:30]
    for r in rows[:20]:
        r.pop("formation_energy_per_atom")
    data = write_jsonl(tmp_path / "late.jsonl.gz", rows)
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "none of the first" in r.getMessage()]

    built = []  # (records done, warnings so far) after each chunk's graphs
    with caplog.at_level("WARNING", logger="crysdistill"):
        graphs = stream_graphs(str(data), GraphSettings(), tmp_path / "c", workers=1, chunk=10,
                               expect_labels=["formation_energy_per_atom"], progress=lambda n: built.append((n, len(warnings()))))
    assert built == [(10, 1), (20, 1), (30, 1)]  # warned once, before the first chunk's graphs were built
    assert "none of the first 10 records has the label 'formation_energy_per_atom'" in warnings()[0]
    check_labels(graphs, ["formation_energy_per_atom"], str(data))  # labelled records later: no error
    caplog.clear()
    stream_graphs(str(data), GraphSettings(), tmp_path / "c", workers=1, chunk=10, expect_labels=["e_above_hull"])  # in every record
    assert not warnings()
    built.clear()
    with pytest.raises(UserError, match=r"no structure has the label 'band_gap'.*e_above_hull, formation_energy"):
        stream_graphs(str(data), GraphSettings(), tmp_path / "c2", workers=1, chunk=100, expect_labels=["band_gap"],
                      progress=lambda n: built.append(n))
    assert built == [] and not warnings()
    with pytest.raises(UserError, match="no structure has the label 'band_gap'"):  # exactly one chunk: still whole
        stream_graphs(str(data), GraphSettings(), tmp_path / "c2", workers=1, chunk=30, expect_labels=["band_gap"],
                      progress=lambda n: built.append(n))
    assert built == [] and not warnings()
