"""The corpus term: encoder distillation kept on while a distilled student trains on labels.

A student started from a distilled encoder (``TrainConfig.init``, written by ``crysdistill
distill``) forgets part of what it learnt from the teacher as the few labels pull its encoder
their way. With ``TrainConfig.corpus.weight`` > 0, every training step also shows it a batch of
unlabelled corpus structures on which its atom embeddings must still reproduce the teacher's
(the layer-normalised loss of :class:`~crysdistill.distill.corpus.LayerRegression`, starting from
the maps the encoder was distilled with, which keep training). The teacher, its layers and the
maps are read from the ``init`` file; the teacher's embeddings come from the embedding cache, so
the teacher runs only where the cache has nothing. The trained student predicts without it.

Honesty rules, as for the teacher-labelled corpus: no corpus structure in the run's training,
validation or test split is used (matched by content), and the corpus carries no labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crysdistill.data.cache import GraphSet
from crysdistill.data.records import Record
from crysdistill.errors import CheckpointError, ConfigError, UserError

log = logging.getLogger("crysdistill.train")


@dataclass
class CorpusTerm:
    """Corpus structures (student graphs) with the teacher's atom embeddings, and the maps to start from."""

    graphs: GraphSet
    embeddings: Any  # TeacherEmbeddings aligned with ``graphs``
    widths: list[int]
    head_state: dict
    info: dict[str, Any] = field(default_factory=dict)


def corpus_term(cfg, records: list[Record], splits: dict[str, np.ndarray], featurizer, device: str = "cpu",
                progress=None) -> CorpusTerm:
    """Prepare the corpus term of ``cfg.corpus`` for a run whose records and splits are given.

    Raises:
        ConfigError: no ``init``, an ``init`` that is not a distilled encoder, or injection
            (corpus structures have no injected features).
        UserError: the corpus is missing, or none of it is left outside the run's splits.
        CheckpointError: the teacher installed now is not the one the encoder was distilled from.
    """
    from crysdistill.distill.cache import TeacherEmbeddings, embed_records
    from crysdistill.distill.corpus import resolve_init
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.pseudo import corpus_outside_splits
    from crysdistill.utils import load_checkpoint

    c = cfg.corpus
    t0 = time.perf_counter()
    if not cfg.init:
        raise ConfigError("corpus.weight needs --init: the corpus term continues the encoder distillation of a "
                          "student from 'crysdistill distill' (or a shipped one, e.g. --init cgcnn-sevennet)")
    if cfg.distill.inject_layers:
        raise ConfigError("corpus.weight cannot be combined with distill.inject_layers: corpus structures have no "
                          "injected teacher features")
    path = resolve_init(cfg.init)
    ckpt = load_checkpoint(path)
    d, head = ckpt.get("distillation"), ckpt.get("distill_head")
    if not d or not head:
        raise ConfigError(f"{cfg.init}: not a distilled encoder (no distillation record); corpus.weight needs a "
                          "student.pt of 'crysdistill distill'")
    data = c.data or d["corpus"]
    if not c.data and not Path(data).exists():
        raise UserError(f"{cfg.init} was distilled on {data}, which is not here; pass corpus.data=PATH (an "
                        "unlabelled corpus, e.g. the same file)")
    teacher = load_teacher(d["teacher"], device=device)
    if teacher.fingerprint != d["teacher_fingerprint"]:
        raise CheckpointError(f"{cfg.init}: was distilled from {d['teacher']} {d['teacher_fingerprint']}, but that "
                              f"teacher is now {teacher.fingerprint} ({teacher.package} {teacher.package_version()}); "
                              "install that version or distil again")
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    graphs, kept, n_excluded, n_bad = corpus_outside_splits(data, c.max_structures, split_seed, teacher, records,
                                                            splits, featurizer, cfg.cache_dir, cfg.workers, progress)
    layers = [int(k) for k in d["teacher_layers"]]
    emb = embed_records(teacher, kept, layers, cache_dir=cfg.cache_dir, progress=progress, workers=cfg.workers)
    emb = TeacherEmbeddings(emb.store, list(graphs.keys), emb.dim, emb.fingerprint, emb.n_computed)
    info = {"teacher": teacher.spec, "teacher_fingerprint": teacher.fingerprint, "teacher_layers": layers,
            "init": str(path), "corpus": str(data), "n_structures": len(graphs), "n_excluded_in_splits": n_excluded,
            "n_skipped": n_bad + len(graphs.problems), "teacher_computed": emb.n_computed, "weight": c.weight,
            "ratio": c.ratio, "seconds": round(time.perf_counter() - t0, 1)}
    log.info("corpus term: %d structures of %s with %s layers %s (%d in this run's splits excluded, %d embedded "
             "now) in %.0f s", len(graphs), data, teacher.spec, ",".join(map(str, layers)), n_excluded,
             emb.n_computed, info["seconds"])
    return CorpusTerm(graphs, emb, [int(w) for w in d["layer_widths"]], head, info)
