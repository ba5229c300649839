"""Teacher embeddings, computed once per structure and cached on disk.

The teacher is frozen (evaluation mode, no gradients), so its atom embeddings are a pure function
of (teacher weights, structure, chosen layers). They are computed in batches the first time and
stored in an LMDB keyed by the structure's content, under a folder named by the teacher's
fingerprint and the layer selection: a distilled epoch then costs about as much as a vanilla one.

:func:`embed_records` serves any teacher plugin (:class:`~crysdistill.teachers.base.TeacherAdapter`)
from pymatgen structures; :func:`teacher_embeddings` serves a loaded CrysGNN
:class:`~crysdistill.teacher.checkpoint.Teacher` from graphs already built (probe, untrained twins).
Both store the same values under the same fingerprint, so they share the cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from crysdistill.data.batch import collate
from crysdistill.data.cache import GraphSet, GraphStore, default_cache_dir, pack_arrays, structure_key
from crysdistill.data.records import Problem, Record
from crysdistill.distill.losses import TeacherTargets
from crysdistill.errors import RecordError, UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.teachers.base import TeacherAdapter

log = logging.getLogger("crysdistill")


def normalize_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve layer indices (0 = input embedding, ``n_layers`` = last; negatives count from the end).

    Raises:
        ConfigError: an index outside ``0…n_layers``.
    """
    from crysdistill.errors import ConfigError

    if not layers:
        return [n_layers]
    out = []
    for layer in layers:
        k = layer if layer >= 0 else n_layers + 1 + layer
        if not 0 <= k <= n_layers:
            raise ConfigError(f"teacher layer {layer} does not exist (the teacher has layers 0…{n_layers}, "
                              "0 = input embedding)")
        out.append(k)
    return out


def _pack_layers(layers: Sequence[torch.Tensor], ptr: Sequence[int], ks: Sequence[int]) -> list[bytes]:
    """Each chosen layer L2-normalised per atom and concatenated; one packed entry per structure."""
    node = torch.cat([F.normalize(layers[k].float(), dim=-1) for k in ks], dim=-1).cpu()
    out = []
    for b in range(len(ptr) - 1):
        n = node[ptr[b]:ptr[b + 1]]
        out.append(pack_arrays({"node": n.numpy().astype(np.float32), "graph": n.mean(0).numpy().astype(np.float32)}))
    return out


@dataclass
class TeacherEmbeddings:
    """Cached teacher embeddings of a list of structures (aligned with a :class:`GraphSet`).

    Attributes:
        store: LMDB of ``{"node": (n_sites, D), "graph": (D,)}`` per structure key.
        keys: structure keys, aligned with the student's graphs.
        dim: embedding width ``D``.
        fingerprint: teacher fingerprint + layers.
        n_computed: structures embedded by this call (0 when all came from the cache).
    """

    store: GraphStore
    keys: list[str]
    dim: int
    fingerprint: str
    n_computed: int = 0
    #: atom embeddings kept in memory after their first read, up to this many bytes (injection
    #: reads the same structures every epoch; a corpus larger than this keeps streaming)
    memo_bytes: int = 1 << 30
    _memo: dict = field(default_factory=dict, repr=False)
    _memo_used: int = 0

    def node_list(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Atom embeddings ``(n_sites, D)`` of structures ``indices`` (e.g. as extra student inputs)."""
        out = []
        for i in indices:
            key = self.keys[i]
            t = self._memo.get(key)
            if t is None:
                t = torch.from_numpy(self.store.get(key)["node"].copy())
                if self._memo_used + t.numel() * 4 <= self.memo_bytes:
                    self._memo[key] = t
                    self._memo_used += t.numel() * 4
            out.append(t)
        return out

    def targets(self, indices: Sequence[int]) -> TeacherTargets:
        """Stack the embeddings of structures ``indices`` into :class:`TeacherTargets`."""
        nodes, graphs, sizes = [], [], [0]
        for i in indices:
            a = self.store.get(self.keys[i])
            nodes.append(torch.from_numpy(a["node"].copy()))
            graphs.append(torch.from_numpy(a["graph"].copy()))
            sizes.append(a["node"].shape[0])
        return TeacherTargets(torch.cat(nodes), torch.tensor(np.cumsum(sizes), dtype=torch.long), torch.stack(graphs))


def teacher_embeddings(
    teacher: Teacher,
    teacher_graphs: GraphSet,
    layers: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherEmbeddings:
    """Embed every structure of ``teacher_graphs`` with the frozen teacher (cached).

    Args:
        teacher: the loaded teacher (frozen).
        teacher_graphs: graphs built with ``teacher.featurizer()``.
        layers: teacher layers to concatenate (default: the last).
        cache_dir: cache folder (default :func:`default_cache_dir`).
        batch_size: structures per teacher forward pass.
        progress: ``progress(done, total)`` callback.
    """
    ks = normalize_layers(layers, teacher.encoder.config.layers)
    fp = f"{teacher.fingerprint}-L{'.'.join(map(str, ks))}"
    store = GraphStore(cache_dir or default_cache_dir(), name="teacher-embeddings", fingerprint=fp,
                       settings={"teacher": teacher.fingerprint, "layers": ks, "path": teacher.path})
    todo = sorted({teacher_graphs.keys[i]: i for i in store.missing(teacher_graphs.keys)}.values())
    teacher.encoder.eval()
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        batch = collate([teacher_graphs[i] for i in idx], teacher.graph_settings)
        with torch.no_grad():
            layers_out = teacher.encoder(batch).layers
        blobs = _pack_layers(layers_out, batch.ptr.tolist(), ks)
        store.put_many([(teacher_graphs.keys[i], blob) for i, blob in zip(idx, blobs)])
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    store.close()
    return TeacherEmbeddings(store, list(teacher_graphs.keys), teacher.encoder.width * len(ks), fp, len(todo))


def check_records(teacher: TeacherAdapter, records: Sequence[Record], on_error: str = "raise"
                  ) -> tuple[list[Record], list[Problem]]:
    """Keep the records ``teacher`` can embed (see :meth:`TeacherAdapter.check`).

    Raises:
        RecordError: with ``on_error="raise"``, the first record it cannot embed, named with the teacher.
    """
    ok, problems = [], []
    for r in records:
        reason = teacher.check(r.structure)
        if reason is None:
            ok.append(r)
            continue
        err = RecordError(r.name, f"teacher {teacher.spec} cannot embed it: {reason}",
                          "remove it, pass --on-error skip, or use another teacher")
        if on_error != "skip":
            raise err
        problems.append(Problem(r.name, f"teacher {teacher.spec} cannot embed it: {reason}"))
    return ok, problems


def _embed_batch(teacher: TeacherAdapter, records: Sequence[Record]):
    """``teacher.embed`` of some records; a failure is retried one by one to name the record."""
    try:
        return teacher.embed([r.structure for r in records])
    except Exception as exc:
        if len(records) == 1:
            raise RecordError(records[0].name, f"teacher {teacher.spec} failed on it ({type(exc).__name__}: {exc})",
                              "remove it or pass --on-error skip") from None
        for r in records:
            _embed_batch(teacher, [r])
        raise UserError(f"teacher {teacher.spec} failed on a batch of {len(records)} structures but on none of them "
                        f"alone ({type(exc).__name__}: {exc}); lower the batch size") from None


#: below this many structures to embed, worker processes cost more to start than they save
MIN_PARALLEL = 512

_WORKER: dict = {}


def _worker_init(spec: str, fingerprint: str, threads: int) -> None:
    """Load the teacher once per worker process (and check it is the parent's teacher)."""
    import warnings

    from crysdistill.teachers.registry import load_teacher

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    teacher = load_teacher(spec)
    if teacher.fingerprint != fingerprint:
        raise UserError(f"worker loaded {spec} with fingerprint {teacher.fingerprint}, not {fingerprint}")
    _WORKER["teacher"] = teacher


def _worker_embed(args: tuple[list[Record], list[int]]) -> tuple[list[bytes] | None, str | None]:
    """Embed one chunk in a worker: packed entries, or the one-line error that stopped it."""
    records, ks = args
    teacher = _WORKER["teacher"]
    try:
        blobs: list[bytes] = []
        for start in range(0, len(records), teacher.batch_size):
            out = _embed_batch(teacher, records[start:start + teacher.batch_size])
            blobs += _pack_layers(out.layers, out.ptr.tolist(), ks)
        return blobs, None
    except (RecordError, UserError) as exc:
        return None, str(exc)


def _embed_parallel(teacher: TeacherAdapter, records: Sequence[Record], todo: list[int], ks: list[int], workers: int,
                    bs: int):
    """Yield ``(indices, packed entries)`` chunk by chunk from ``workers`` spawned processes (one thread each)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(bs, min(4 * bs, len(todo) // (4 * workers) or 1))
    chunks = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(teacher.spec, teacher.fingerprint, 1)) as pool:
        for idx, (blobs, err) in zip(chunks, pool.map(_worker_embed, [([records[i] for i in c], ks) for c in chunks])):
            if err is not None:
                raise UserError(err)
            yield idx, blobs


def embed_records(
    teacher: TeacherAdapter,
    records: Sequence[Record],
    layers: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> TeacherEmbeddings:
    """Embed the structures of ``records`` with any teacher plugin, computing only what the cache lacks.

    Each chosen layer is L2-normalised per atom and the layers are concatenated (every layer weighs
    the same); the per-structure embedding is the mean over atoms. Run :func:`check_records` first
    to name or skip structures the teacher cannot embed.

    Args:
        teacher: a loaded teacher plugin (frozen).
        records: the structures (their content keys the cache).
        layers: layer indices (0 = input embedding, -1 = last; default: the last).
        cache_dir: cache folder (default :func:`default_cache_dir`).
        batch_size: structures per forward pass (default: the teacher's ``batch_size``).
        progress: ``progress(done, total)`` callback.
        workers: processes that embed in parallel, one torch thread each, each with its own copy
            of the teacher (loaded again from :attr:`~TeacherAdapter.spec`; a random twin, or
            fewer than :data:`MIN_PARALLEL` structures to embed, runs in this process). Results
            are written by this process, so the cache needs no locking.

    Returns:
        :class:`TeacherEmbeddings` aligned with ``records``.
    """
    ks = normalize_layers(layers, teacher.n_layers)
    fp = f"{teacher.fingerprint}-L{'.'.join(map(str, ks))}"
    store = GraphStore(cache_dir or default_cache_dir(), name="teacher-embeddings", fingerprint=fp,
                       settings={"teacher": teacher.spec, "fingerprint": teacher.fingerprint, "layers": ks,
                                 "layer_names": [teacher.layer_names[k] for k in ks]})
    keys = [structure_key(r.structure) for r in records]
    todo = sorted({keys[i]: i for i in store.missing(keys)}.values())
    bs = int(batch_size or teacher.batch_size)
    t0 = time.perf_counter()
    parallel = workers > 1 and len(todo) >= MIN_PARALLEL and teacher.twin_seed is None

    def serial():
        for start in range(0, len(todo), bs):
            idx = todo[start:start + bs]
            out = _embed_batch(teacher, [records[i] for i in idx])
            yield idx, _pack_layers(out.layers, out.ptr.tolist(), ks)

    done = 0
    try:
        for idx, blobs in (_embed_parallel(teacher, records, todo, ks, workers, bs) if parallel else serial()):
            store.put_many([(keys[i], blob) for i, blob in zip(idx, blobs)])
            done += len(idx)
            if progress is not None:
                progress(done, len(todo))
    finally:
        store.close()
    if todo:
        dt = time.perf_counter() - t0
        log.info("teacher %s: embedded %d structure(s) in %.1f s (%.1f structures/s%s; %d from the cache)",
                 teacher.spec, len(todo), dt, len(todo) / max(dt, 1e-9),
                 f", {workers} processes" if parallel else "", len(records) - len(todo))
    dim = sum(int(teacher.layer_widths[k]) for k in ks)
    return TeacherEmbeddings(store, keys, dim, fp, len(todo))
