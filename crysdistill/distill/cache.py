"""Teacher embeddings, computed once per structure and cached on disk.

The teacher is frozen (evaluation mode, no gradients), so its atom embeddings are a pure function
of (teacher weights, structure, chosen layers). They are computed in batches the first time and
stored in an LMDB keyed by the structure's content, under a folder named by the teacher's
fingerprint and the layer selection: a distilled epoch then costs about as much as a vanilla one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crysdistill.data.batch import collate
from crysdistill.data.cache import GraphSet, GraphStore, default_cache_dir
from crysdistill.distill.losses import TeacherTargets
from crysdistill.teacher.checkpoint import Teacher


def normalize_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve layer indices (0 = input embedding, ``n_layers`` = last; negatives count from the end).

    Raises:
        ValueError: an index outside ``0…n_layers``.
    """
    if not layers:
        return [n_layers]
    out = []
    for layer in layers:
        k = layer if layer >= 0 else n_layers + 1 + layer
        if not 0 <= k <= n_layers:
            raise ValueError(f"teacher layer {layer} does not exist (the teacher has layers 0…{n_layers})")
        out.append(k)
    return out


def encode_layers(teacher: Teacher, batch, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher on a collated batch.

    Each selected layer is L2-normalised per atom and the layers are concatenated, so every layer
    weighs the same (the last layer alone equals the encoder's ``node`` output).

    Returns:
        ``(node, graph)``: ``(N, width · len(layers))`` atom embeddings and ``(B, width · len(layers))``
        their per-structure means.
    """
    from torch_geometric.utils import scatter

    with torch.no_grad():
        out = teacher.encoder(batch)
        node = torch.cat([F.normalize(out.layers[k], dim=-1) for k in layers], dim=-1)
        graph = scatter(node, out.batch, dim=0, dim_size=int(batch.num_graphs), reduce="mean")
    return node, graph


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

    def node_list(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Atom embeddings ``(n_sites, D)`` of structures ``indices`` (e.g. as extra student inputs)."""
        return [torch.from_numpy(self.store.get(self.keys[i])["node"].copy()) for i in indices]

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
    from crysdistill.data.cache import pack_arrays

    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        batch = collate([teacher_graphs[i] for i in idx], teacher.graph_settings)
        node, graph = encode_layers(teacher, batch, ks)
        ptr = batch.ptr.tolist()
        store.put_many([
            (teacher_graphs.keys[i], pack_arrays({"node": node[ptr[b]:ptr[b + 1]].numpy().astype(np.float32),
                                                  "graph": graph[b].numpy().astype(np.float32)}))
            for b, i in enumerate(idx)
        ])
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    store.close()
    return TeacherEmbeddings(store, list(teacher_graphs.keys), teacher.encoder.width * len(ks), fp, len(todo))
