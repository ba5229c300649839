"""Graphs of a dataset for the teacher, built into the on-disk cache without holding the corpus.

Records are read and featurised in chunks: only the cache keys and ids of the structures stay in
memory, so the memory of pretraining does not grow with the size of the corpus. A second pass
over the same data finds every graph in the cache and does no neighbour search.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from crysdistill.data.batch import label_attribute
from crysdistill.data.cache import GraphSet, GraphStore, build_graphs, default_cache_dir
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.data.readers import iter_raw
from crysdistill.data.records import Problem, Record, check_structure
from crysdistill.errors import RecordError, UserError

log = logging.getLogger(__name__)


def iter_records(source: str, on_error: str = "raise", limit: int | None = None,
                 problems: list[Problem] | None = None) -> Iterator[Record]:
    """Records of ``source`` one at a time, checked as :func:`crysdistill.data.read_dataset` does.

    Args:
        source: dataset path (any format of :mod:`crysdistill.data.readers`).
        on_error: ``"raise"`` or ``"skip"`` (bad records are appended to ``problems``).
        limit: stop after this many usable records.
        problems: list collecting skipped records.

    Raises:
        RecordError: a bad record with ``on_error="raise"``.
    """
    seen: set[str] = set()
    n = 0
    for item in iter_raw(source):
        if limit is not None and n >= limit:
            return
        try:
            if isinstance(item, Problem):
                raise RecordError(item.record, item.reason)
            check_structure(item.structure, item.name)
            if item.id in seen:
                raise RecordError(item.name, f"duplicate id {item.id!r}", "ids must be unique within a dataset")
        except RecordError as exc:
            if on_error == "raise":
                raise
            if problems is not None:
                problems.append(Problem(exc.record, exc.reason))
            continue
        seen.add(item.id)
        n += 1
        yield item


def stream_graphs(source: str, settings: GraphSettings, cache_dir: str | os.PathLike | None = None,
                  workers: int = 2, on_error: str = "raise", limit: int | None = None, chunk: int = 4096,
                  progress: Callable[[int], None] | None = None, expect_labels: Sequence[str] = ()) -> GraphSet:
    """Featurise ``source`` into the graph cache chunk by chunk and return its lazy graph set.

    Args:
        source: dataset path.
        settings: graph settings (the teacher's).
        cache_dir: graph cache folder (default :func:`crysdistill.data.default_cache_dir`).
        workers: processes for building graphs that are not cached yet.
        on_error: ``"raise"`` or ``"skip"`` for bad records and structures that cannot be featurised.
        limit: use only the first ``limit`` usable records.
        chunk: records read and featurised at a time (bounds memory).
        progress: called with the number of records done after each chunk.
        expect_labels: record labels a pretext task reads. If none of the first chunk's records
            has one, that is an error when the chunk is the whole corpus and a warning otherwise,
            before any graph is built (:func:`check_labels` decides at the end; a corpus may hold
            its labelled records late).

    Raises:
        UserError: no usable structure, a bad record with ``on_error="raise"``, or an expected
            label on no record of a corpus that fits in one chunk.
    """
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    featurizer = CrystalGraphFeaturizer(settings)
    cache_dir = cache_dir or default_cache_dir()
    keys: list[str] = []
    ids: list[str] = []
    labels: list[dict] = []
    problems: list[Problem] = []
    n_built = 0
    buffer: list[Record] = []
    n_chunks = 0

    def flush(last: bool) -> None:
        nonlocal n_built, n_chunks
        if n_chunks == 0:
            check_first_chunk(whole=last)
        n_chunks += 1
        try:
            part = build_graphs(buffer, featurizer, cache_dir, workers=workers, on_error=on_error)
        except RecordError:
            raise
        except UserError as exc:  # every record of this chunk failed; keep going with the others
            problems.extend(Problem(r.name, str(exc)) for r in buffer)
        else:
            keys.extend(part.keys)
            ids.extend(part.ids)
            labels.extend(part.labels)
            problems.extend(part.problems)
            n_built += part.n_built
        buffer.clear()
        if progress is not None:
            progress(len(keys) + len(problems))

    def check_first_chunk(whole: bool) -> None:
        """Before the first chunk is featurised: a label no record of it has is an error if the
        chunk is the whole corpus, else a warning (labelled records may come later)."""
        for key in expect_labels:
            if not any(r.labels.get(key) is not None for r in buffer):
                found = sorted({k for r in buffer for k, v in r.labels.items() if v is not None})
                if whole:
                    raise UserError(_no_label_message(source, key, found))
                log.warning("%s: none of the first %d records has the label %r that a pretext task reads "
                            "(labels found: %s); the run stops after building the graphs if no record has it",
                            source, len(buffer), key, ", ".join(found) or "none")

    for record in iter_records(source, on_error, limit, problems):
        if len(buffer) >= chunk:
            flush(last=False)  # a full chunk is featurised once a record after it is read
        buffer.append(record)
    if buffer:
        flush(last=True)
    if not keys:
        if problems:
            raise UserError(f"{source}: no usable structures ({len(problems)} skipped; first: "
                            f"{problems[0].record}: {problems[0].reason})")
        raise UserError(f"{source}: no usable structures found (empty dataset); check the path and format")
    return GraphSet(GraphStore(cache_dir, featurizer), keys, ids, labels, problems, n_built)


def data_fingerprint(graphs: GraphSet) -> str:
    """Hash of the graphs' cache keys in order and of the featuriser: identifies the training data."""
    h = hashlib.sha256(graphs.store.path.name.encode())
    for k in graphs.keys:
        h.update(k.encode())
    return h.hexdigest()[:16]


class GraphDataset(torch.utils.data.Dataset):
    """A :class:`GraphSet` as a torch dataset: item ``i`` is graph ``i``'s arrays, read lazily.

    Args:
        graphs: the graphs.
        label_keys: record labels to attach to each item as ``label_<key>`` (NaN where a record
            has no such label), for pretext tasks that read labels (:func:`collate` puts them on the
            batch).
    """

    def __init__(self, graphs: GraphSet, label_keys: Sequence[str] = ()) -> None:
        self.graphs = graphs
        self.label_keys = tuple(label_keys)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        arrays = self.graphs[int(i)]
        if not self.label_keys:
            return arrays
        arrays = dict(arrays)
        labels = self.graphs.labels[int(i)]
        for key in self.label_keys:
            value = labels.get(key)
            arrays[label_attribute(key)] = np.array([np.nan if value is None else value], dtype=np.float32)
        return arrays


def check_labels(graphs: GraphSet, keys: Sequence[str], source: str) -> None:
    """Fail with one line when a label some pretext task reads is on none of the structures.

    Raises:
        UserError: naming the label, the data and the labels the data do have.
    """
    for key in keys:
        if not any(lab.get(key) is not None for lab in graphs.labels):
            found = sorted({k for lab in graphs.labels[:1000] for k, v in lab.items() if v is not None})
            raise UserError(_no_label_message(source, key, found))


def _no_label_message(source: str, key: str, found: Sequence[str]) -> str:
    return (f"{source}: no structure has the label {key!r} that a pretext task reads "
            f"(labels found: {', '.join(found) or 'none'}); set the task's label option to one of them")
