"""The LMDB graph cache: built once, keyed by content and settings, parallel = serial, and
readable from pickled copies (DataLoader workers); plus batching of cached graphs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crysdistill.data.batch import collate, to_data
from crysdistill.data.cache import (
    GraphSet,
    GraphStore,
    build_graphs,
    pack_arrays,
    structure_key,
    unpack_arrays,
)
from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import Arrays, CrystalGraphFeaturizer, GraphSettings, gaussian_expansion
from crysdistill.data.records import Record
from crysdistill.errors import RecordError, UserError


def records_of(structures: list[Structure], prefix: str = "s") -> list[Record]:
    return [Record(f"{prefix}{k}", s, {"y": float(k)}) for k, s in enumerate(structures)]


def assert_graphs_equal(a: Arrays, b: Arrays) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def bad_structures() -> list[Structure]:
    """An element without features and an atom with no neighbour within 8 Å."""
    og = Structure(Lattice.cubic(4.0), ["Og", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    lonely = Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]])
    return [og, lonely]


# --------------------------------------------------------------------------------------------
# building and reading back


def test_second_pass_builds_nothing_and_returns_identical_arrays(small_structures, cache_dir):
    records = records_of(small_structures)
    f = CrystalGraphFeaturizer()
    first = build_graphs(records, f, cache_dir)
    assert first.n_built == len(records) and len(first) == len(records)
    assert first.ids == [r.id for r in records] and first.labels == [r.labels for r in records]
    before = [first[i] for i in range(len(first))]
    second = build_graphs(records, f, cache_dir)  # the first GraphSet's environment is still open
    assert second.n_built == 0
    assert second.keys == first.keys
    for i in range(len(records)):
        assert_graphs_equal(second[i], before[i])
        assert_graphs_equal(second[i], f.featurize(records[i].structure))
        assert_graphs_equal(first[i], before[i])


def test_incremental_build_only_adds_missing(small_structures, cache_dir):
    f = CrystalGraphFeaturizer(GraphSettings(symmetry=False))
    records = records_of(small_structures)
    assert build_graphs(records[:2], f, cache_dir).n_built == 2
    gs = build_graphs(records, f, cache_dir)
    assert gs.n_built == len(records) - 2 and len(gs) == len(records)


def test_key_depends_on_content_not_id(nacl, cu_primitive, cache_dir):
    assert structure_key(nacl) == structure_key(nacl.copy())
    moved = nacl.copy()
    moved.translate_sites([0], [0.001, 0, 0])
    assert structure_key(moved) != structure_key(nacl)
    relabelled = nacl.copy()
    relabelled.replace(0, "K")
    assert structure_key(relabelled) != structure_key(nacl)
    records = [Record("a", nacl), Record("b", nacl.copy()), Record("c", cu_primitive)]
    gs = build_graphs(records, CrystalGraphFeaturizer(), cache_dir)
    assert gs.n_built == 2  # the same crystal under two ids is built once
    assert gs.keys[0] == gs.keys[1] and gs.ids == ["a", "b", "c"]
    again = build_graphs([Record("renamed", nacl.copy())], CrystalGraphFeaturizer(), cache_dir)
    assert again.n_built == 0


def test_different_settings_use_different_stores(small_structures, cache_dir):
    records = records_of(small_structures)
    a = build_graphs(records, CrystalGraphFeaturizer(), cache_dir)
    b = build_graphs(records, CrystalGraphFeaturizer(GraphSettings(max_neighbors=6)), cache_dir)
    assert a.store.path != b.store.path and a.store.path.parent == b.store.path.parent
    assert b.n_built == len(records)
    assert b[0]["edge_index"].shape[1] == 6 * len(small_structures[0])
    assert a[0]["edge_index"].shape[1] == 12 * len(small_structures[0])
    assert (a.store.path / "featurizer.json").is_file()


def test_parallel_equals_serial(sample_path, small_structures, tmp_path):
    from crysdistill.data.readers import read_dataset

    records = read_dataset(sample_path, limit=40).records + records_of(small_structures, "x")
    f = CrystalGraphFeaturizer()
    serial = build_graphs(records, f, tmp_path / "serial", workers=1)
    parallel = build_graphs(records, f, tmp_path / "parallel", workers=2, chunk=7)
    assert parallel.n_built == serial.n_built == len(records)
    assert parallel.keys == serial.keys and parallel.ids == serial.ids
    for i in range(len(records)):
        assert_graphs_equal(parallel[i], serial[i])


def test_progress_callback(small_structures, cache_dir):
    calls = []
    build_graphs(records_of(small_structures), CrystalGraphFeaturizer(), cache_dir,
                 progress=lambda done, total: calls.append((done, total)))
    n = len(small_structures)
    assert calls == [(k, n) for k in range(1, n + 1)]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_records_skip_and_raise(small_structures, cache_dir, workers):
    records = records_of(small_structures[:2] + bad_structures())
    f = CrystalGraphFeaturizer(GraphSettings(symmetry=False))
    with pytest.raises(RecordError, match=r"^s2: element\(s\) Og outside"):
        build_graphs(records, f, cache_dir, workers=workers)
    gs = build_graphs(records, f, cache_dir, workers=workers, on_error="skip")
    assert gs.ids == ["s0", "s1"]
    assert [(p.record, p.reason.split(" (")[0].split(" outside")[0]) for p in gs.problems] == [
        ("s2", "element(s) Og"), ("s3", "atom 0")]
    assert "no neighbour within 8.0 Å" in gs.problems[1].reason


def test_nothing_usable(cache_dir):
    with pytest.raises(UserError, match="no structure could be featurised: element"):
        build_graphs(records_of(bad_structures()), CrystalGraphFeaturizer(), cache_dir, on_error="skip")
    with pytest.raises(UserError, match="on_error must be"):
        build_graphs(records_of(bad_structures()), CrystalGraphFeaturizer(), cache_dir, on_error="warn")


def test_subset(small_structures, cache_dir):
    gs = build_graphs(records_of(small_structures), CrystalGraphFeaturizer(), cache_dir)
    sub = gs.subset([3, 1])
    assert sub.ids == ["s3", "s1"] and sub.labels == [{"y": 3.0}, {"y": 1.0}]
    assert_graphs_equal(sub[0], gs[3])


# --------------------------------------------------------------------------------------------
# storage format and process boundaries


def test_pack_unpack_round_trip():
    arrays = {
        "int8": np.array([[-1, 0, 1]], dtype=np.int8),
        "int16": np.arange(5, dtype=np.int16),
        "int32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "int64": np.array([2**40], dtype=np.int64),
        "float32": np.linspace(0, 1, 7, dtype=np.float32),
        "float64_big_endian": np.arange(4, dtype=">f8"),
        "bool": np.array([True, False]),
        "empty": np.zeros((2, 0), dtype=np.int32),
        "scalar": np.array(3.5),
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    }
    out = unpack_arrays(pack_arrays(arrays))
    assert list(out) == list(arrays)
    assert_graphs_equal(out, arrays)


def test_graph_arrays_round_trip(triclinic):
    g = CrystalGraphFeaturizer().featurize(triclinic)
    assert_graphs_equal(unpack_arrays(pack_arrays(g)), g)


def _as_list(batch: list) -> list:
    return batch


def test_graphset_after_pickling_and_in_dataloader_workers(small_structures, cache_dir):
    gs = build_graphs(records_of(small_structures), CrystalGraphFeaturizer(), cache_dir)
    expected = [gs[i] for i in range(len(gs))]  # the parent has the environment open before forking
    clone = pickle.loads(pickle.dumps(gs))
    assert isinstance(clone, GraphSet) and clone.ids == gs.ids
    for i in range(len(gs)):
        assert_graphs_equal(clone[i], expected[i])
    loader = torch.utils.data.DataLoader(gs, batch_size=2, num_workers=2, collate_fn=_as_list)
    got = [g for batch in loader for g in batch]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_graphs_equal(a, b)


def test_store_by_name_and_fingerprint(tmp_path):
    store = GraphStore(tmp_path, name="emb", fingerprint="abc", settings={"what": "test"})
    assert store.missing(["k1", "k2"]) == [0, 1]
    with pytest.raises(KeyError):
        store.get("k1")
    store.put_many([("k1", pack_arrays({"v": np.ones(3, np.float32)}))])
    other = GraphStore(tmp_path, name="emb", fingerprint="abc")  # a second handle on the same folder
    assert other.missing(["k1", "k2"]) == [1]
    np.testing.assert_array_equal(other.get("k1")["v"], np.ones(3))
    store.close()
    np.testing.assert_array_equal(other.get("k1")["v"], np.ones(3))
    assert store.size_bytes() > 0 and store.path.name == "emb-abc"
    with pytest.raises(ValueError):
        GraphStore(tmp_path)


# --------------------------------------------------------------------------------------------
# batching cached graphs


def test_collate_batches(nacl, cu_primitive, cache_dir):
    settings = GraphSettings()
    gs = build_graphs([Record("a", nacl), Record("b", cu_primitive)], CrystalGraphFeaturizer(settings), cache_dir)
    batch = collate([gs[0], gs[1]], settings)
    table, _ = atom_feature_table("cgcnn")
    assert batch.num_graphs == 2
    assert batch.x.shape == (9, 92) and batch.x.dtype == torch.float32
    np.testing.assert_array_equal(batch.x.numpy(), table[[11] * 4 + [17] * 4 + [29]])
    assert batch.site_id.tolist() == list(range(8)) + [0]  # not shifted by PyG
    assert batch.batch.tolist() == [0] * 8 + [1]
    assert batch.edge_index.shape == (2, 8 * 12 + 12)
    assert (batch.edge_index[:, 96:] == 8).all()  # Cu's self-images, shifted by NaCl's 8 nodes
    assert batch.edge_attr.shape == (108, 41)
    torch.testing.assert_close(batch.edge_attr, gaussian_expansion(batch.distance, settings))
    assert batch.spg.tolist() == [225, 225] and batch.crystal_system.tolist() == [6, 6]
    assert batch.lattice.shape == (2, 3, 3)
    single = to_data(gs[1], settings)
    assert single.edge_index.dtype == torch.int64 and single.num_nodes == 1


def test_progress_off_a_terminal_logs_rate_and_time_left(caplog):
    import logging

    from crysdistill.utils import build_progress

    cb = build_progress("teacher embeddings", every=0.0)
    with caplog.at_level(logging.INFO, logger="crysdistill"):
        cb(50, 200)
    line = caplog.records[-1].getMessage()
    assert line.startswith("teacher embeddings: 50/200 (") and "/s, " in line and "min left" in line
