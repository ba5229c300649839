"""On-disk graph cache (LMDB), keyed by structure content and featuriser fingerprint.

Graphs are built once, in parallel worker processes, and read back lazily, so a second pass over
a dataset does no neighbour search and a corpus larger than memory can be streamed. Values are
stored in a small self-describing binary format (a JSON header plus raw array bytes): loading
never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from crysdistill.data.graph import Arrays, Featurizer
from crysdistill.data.records import Problem, Record
from crysdistill.errors import RecordError, UserError

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file only grows as needed

#: Open LMDB environments by store folder, ``(pid, environment, writable)``: see ``GraphStore._open``.
_ENVS: dict[str, tuple[int, Any, bool]] = {}


def default_cache_dir() -> Path:
    """``$CRYSDISTILL_CACHE`` or ``~/.cache/crysdistill``."""
    env = os.environ.get("CRYSDISTILL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crysdistill"


def structure_key(structure: Structure) -> str:
    """Content hash of a structure: lattice, species and fractional coordinates (to 1e-6)."""
    h = hashlib.sha1()
    h.update(np.round(structure.lattice.matrix, 6).astype(np.float64).tobytes())
    h.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    h.update(np.round(structure.frac_coords, 6).astype(np.float64).tobytes())
    return h.hexdigest()


def pack_arrays(arrays: Arrays) -> bytes:
    """Serialise a dict of arrays without pickle."""
    header, blobs, offset = {}, [], 0
    for k, a in arrays.items():
        a = np.asarray(a)  # not ascontiguousarray: it turns 0-d arrays into 1-d; tobytes() is C order
        b = a.tobytes()
        header[k] = [a.dtype.str, list(a.shape), offset, len(b)]
        blobs.append(b)
        offset += len(b)
    hb = json.dumps(header).encode()
    return struct.pack("<I", len(hb)) + hb + b"".join(blobs)


def unpack_arrays(buf: bytes) -> Arrays:
    """Inverse of :func:`pack_arrays`."""
    (n,) = struct.unpack_from("<I", buf, 0)
    header = json.loads(bytes(buf[4:4 + n]))
    base = 4 + n
    out = {}
    for k, (dtype, shape, off, size) in header.items():
        out[k] = np.frombuffer(buf, dtype=np.dtype(dtype), count=size // np.dtype(dtype).itemsize,
                               offset=base + off).reshape(shape)
    return out


class GraphStore:
    """An LMDB file of packed graphs for one featuriser fingerprint.

    Args:
        root: cache folder; the store lives in ``root/<name>-<fingerprint>/``.
        featurizer: the featuriser whose graphs are stored (gives name, fingerprint, settings).
        name: store name when there is no featuriser (e.g. cached teacher embeddings).
        fingerprint: what the stored values depend on, when there is no featuriser.
        settings: JSON-able description written next to the store.
    """

    def __init__(self, root: str | os.PathLike, featurizer: Featurizer | None = None, *, name: str = "",
                 fingerprint: str = "", settings: dict | None = None) -> None:
        if featurizer is not None:
            name, fingerprint, settings = featurizer.name, featurizer.fingerprint(), featurizer.settings()
        if not name or not fingerprint:
            raise ValueError("GraphStore needs a featurizer or a name and a fingerprint")
        self.path = Path(root) / f"{name}-{fingerprint}"
        self._settings = settings or {}
        self._key = str(self.path.resolve())  # registry key of the LMDB environment

    def _open(self, write: bool = False):
        """The process-wide LMDB environment of this store (``None`` if nothing is stored yet).

        LMDB allows one open environment per file and process, and several :class:`GraphStore`
        objects (e.g. the :class:`GraphSet` of a first :func:`build_graphs` call and the store of
        a second call) may point at the same folder, so environments are shared through a
        module-level registry keyed by the folder, and looked up on every operation.
        """
        import lmdb

        key = self._key
        entry = _ENVS.get(key)
        if entry is not None:
            pid, env, writable = entry
            if pid != os.getpid():
                # Inherited through fork (e.g. a DataLoader worker): never use the parent's handle.
                # Closing the child's copy only unmaps the child's memory and closes the child's
                # descriptors; it is needed because lmdb refuses a second open in "this" process.
                del _ENVS[key]
                env.close()
            elif writable or not write:
                return env
            else:
                env.close()  # reopen for writing
                del _ENVS[key]
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            settings_file = self.path / "featurizer.json"
            if not settings_file.exists():
                settings_file.write_text(json.dumps(self._settings, indent=1, sort_keys=True) + "\n")
        elif not (self.path / "data.mdb").exists():
            return None
        env = lmdb.open(str(self.path), map_size=DEFAULT_MAP_SIZE, subdir=True, readonly=not write,
                        lock=write, readahead=False, meminit=False, max_readers=256)
        _ENVS[key] = (os.getpid(), env, write)
        return env

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in ``keys`` whose graphs are not stored yet."""
        env = self._open()
        if env is None:
            return list(range(len(keys)))
        with env.begin() as txn:
            return [i for i, k in enumerate(keys) if txn.get(k.encode()) is None]

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        env = self._open(write=True)
        with env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k.encode(), v)

    def get(self, key: str) -> Arrays:
        env = self._open()
        if env is None:
            raise KeyError(key)
        with env.begin(buffers=False) as txn:
            buf = txn.get(key.encode())
        if buf is None:
            raise KeyError(key)
        return unpack_arrays(buf)

    def close(self) -> None:
        """Close this folder's environment in this process (any store reopens it on next use)."""
        entry = _ENVS.pop(self._key, None)
        if entry is not None:
            entry[1].close()

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*.mdb")) if self.path.exists() else 0


@dataclass
class GraphSet:
    """Cached graphs of a list of records: ids, labels and lazy access to the arrays.

    Attributes:
        store: where the graphs live.
        keys: content keys, one per usable record.
        ids: record ids, aligned with ``keys``.
        labels: record labels, aligned with ``keys``.
        problems: records the featuriser could not represent (skipped with ``on_error="skip"``).
        n_built: graphs built by this call (0 on a second pass).
    """

    store: GraphStore
    keys: list[str]
    ids: list[str]
    labels: list[dict[str, float | None]]
    problems: list[Problem] = field(default_factory=list)
    n_built: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Arrays:
        return self.store.get(self.keys[i])

    def subset(self, indices: Sequence[int]) -> GraphSet:
        """A view on some of the graphs (e.g. a split)."""
        return GraphSet(self.store, [self.keys[i] for i in indices], [self.ids[i] for i in indices],
                        [self.labels[i] for i in indices], [], 0)


def _featurize_task(args: tuple[Featurizer, int, Structure, str]) -> tuple[int, bytes | None, str | None]:
    featurizer, i, structure, name = args
    try:
        return i, pack_arrays(featurizer.featurize(structure, name)), None
    except RecordError as exc:
        return i, None, exc.reason + (f"; {exc.hint}" if exc.hint else "")
    except Exception as exc:  # a featuriser bug or exotic input: report, do not crash the pool
        return i, None, f"featurisation failed ({type(exc).__name__}: {exc})"


def build_graphs(
    records: Sequence[Record],
    featurizer: Featurizer,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 256,
) -> GraphSet:
    """Featurise ``records`` into the cache (only those not there yet) and return their graphs.

    Args:
        records: the structures.
        featurizer: structure → arrays.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        workers: worker processes for building (1 = in this process).
        on_error: ``"raise"`` or ``"skip"`` (records the featuriser rejects are listed in
            :attr:`GraphSet.problems`).
        progress: called as ``progress(done, total)`` while building.
        chunk: graphs written per LMDB transaction.

    Raises:
        RecordError: a record the featuriser rejects, with ``on_error="raise"``.
    """
    if on_error not in ("raise", "skip"):
        raise UserError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    store = GraphStore(cache_dir or default_cache_dir(), featurizer)
    keys = [structure_key(r.structure) for r in records]
    todo = store.missing(keys)
    failed: dict[int, str] = {}
    # the same structure may occur twice; build it once
    first: dict[str, int] = {}
    for i in todo:
        first.setdefault(keys[i], i)
    tasks = [(featurizer, i, records[i].structure, records[i].name) for i in first.values()]
    n_built = 0
    if tasks:
        buffer: list[tuple[str, bytes]] = []

        def consume(results):
            nonlocal n_built
            for done, (i, blob, err) in enumerate(results, start=1):
                if err is not None:
                    if on_error == "raise":
                        raise RecordError(records[i].name, err)
                    failed[i] = err
                else:
                    buffer.append((keys[i], blob))
                    n_built += 1
                if len(buffer) >= chunk:
                    store.put_many(buffer)
                    buffer.clear()
                if progress is not None:
                    progress(done, len(tasks))

        if workers > 1 and len(tasks) > 1:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ctx.Pool(workers) as pool:
                consume(pool.imap(_featurize_task, tasks, chunksize=max(1, min(64, len(tasks) // (4 * workers)))))
        else:
            consume(map(_featurize_task, tasks))
        if buffer:
            store.put_many(buffer)
        store.close()
    bad_keys = {keys[i]: err for i, err in failed.items()}
    problems = [Problem(records[i].name, bad_keys[keys[i]]) for i in range(len(records)) if keys[i] in bad_keys]
    keep = [i for i in range(len(records)) if keys[i] not in bad_keys]
    if not keep:
        raise UserError("no structure could be featurised: " + (problems[0].reason if problems else "empty dataset"))
    return GraphSet(store, [keys[i] for i in keep], [records[i].id for i in keep],
                    [records[i].labels for i in keep], problems, n_built)
