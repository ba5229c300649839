"""The teacher-labelled corpus: response distillation on unlabelled structures.

A frozen teacher + head (:func:`crysdistill.train.head.fit_head` on the teacher's per-structure
embeddings) is fitted on the run's **training** split and chosen on its **validation** split,
exactly as ``crysdistill head`` does; it then labels structures of an unlabelled corpus, and the
student trains on those labels next to the true ones (``TrainConfig.pseudo``). The student
imitates the teacher's answers on many more structures than there are labels (Gardner et al.
2024, Matin et al. 2025 use teacher-labelled data the same way), and predicts without it.

Honesty rules, enforced here:

* no corpus structure that is in the run's training, validation or test split is labelled
  (matched by structure content, not by id), so the test split stays unseen and a true label
  is never replaced by a teacher's guess;
* the head sees only training labels; validation chooses among its candidates, as for every
  model; the test split is not touched;
* the teacher's training data are recorded, and a teacher trained on the target is warned about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crysdistill.data.cache import GraphSet, build_graphs, structure_key
from crysdistill.data.readers import Dataset, read_dataset
from crysdistill.data.records import Record
from crysdistill.errors import ConfigError, UserError

log = logging.getLogger("crysdistill.train")

_CORPORA: dict[str, tuple[Dataset, list[str]]] = {}  # a corpus and its structure keys, once per process


@dataclass
class PseudoLabels:
    """Teacher-labelled corpus structures: student graphs and their labels (user units, ``(n, T)``)."""

    graphs: GraphSet
    y: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _corpus(path: str) -> tuple[Dataset, list[str]]:
    """The corpus at ``path`` and the structure key of each record (read once per process: benchmarks
    run many seeds)."""
    if path not in _CORPORA:
        _CORPORA.clear()
        ds = read_dataset(path, on_error="skip")
        _CORPORA[path] = (ds, [structure_key(r.structure) for r in ds.records])
    return _CORPORA[path]


def teacher_labels(cfg, records: list[Record], splits: dict[str, np.ndarray], y: np.ndarray, normalizer,
                   featurizer, device: str = "cpu", progress=None) -> PseudoLabels:
    """Fit the teacher + head on the training split and label the corpus of ``cfg.pseudo``.

    Args:
        cfg: the run's :class:`~crysdistill.train.config.TrainConfig` (``pseudo``, ``seed``,
            ``split_seed``, ``cache_dir``, ``workers``).
        records: the run's records, aligned with its graphs (``y`` rows, split indices).
        splits: the run's ``train``/``val``/``test`` indices.
        y: ``(n, T)`` labels in the user's units.
        normalizer: the run's target normaliser (transform included).
        featurizer: the student's featuriser (the corpus graphs are built with it, cached).

    Raises:
        ConfigError: ``pseudo.teacher`` without ``pseudo.data`` (or the reverse).
        UserError: a corpus with no structure left outside the run's splits.
    """
    from crysdistill.distill.cache import check_records
    from crysdistill.teachers.base import check_unseen, warn_if_leaks
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.head import apply_head, fit_head, structure_features

    p = cfg.pseudo
    if not (p.teacher and p.data):
        raise ConfigError("the teacher-labelled corpus needs both pseudo.teacher and pseudo.data")
    t0 = time.perf_counter()
    teacher = load_teacher(p.teacher, device=device)
    check_unseen(teacher, [records[i].id for i in splits["test"]], role="corpus labeller")
    fit_ids = [records[i].id for k in ("train", "val") for i in splits[k]]
    leaked = warn_if_leaks(teacher, cfg.targets, fit_ids, role="corpus labeller")
    ks = list(range(teacher.n_layers + 1))
    # a teacher fine-tuned on these targets labels with its own head (task-specific distillation);
    # any other teacher gets a head fitted here
    own = getattr(teacher, "ckpt", None) if teacher.name == "finetuned" else None
    if own is not None and set(cfg.targets) <= set(own["targets"]):
        return _own_labels(cfg, teacher, records, splits, featurizer, progress, t0, leaked)
    # 1. the head: fitted on training labels, chosen on validation (the test split is not touched)
    fit_rows = np.concatenate([splits["train"], splits["val"]])
    ok, _ = check_records(teacher, [records[i] for i in fit_rows], on_error="skip")
    ok_ids = {r.id for r in ok}
    tr = np.asarray([i for i in splits["train"] if records[i].id in ok_ids], dtype=np.int64)
    va = np.asarray([i for i in splits["val"] if records[i].id in ok_ids], dtype=np.int64)
    if len(tr) < 2 or len(va) < 1:
        raise UserError(f"teacher {teacher.spec} can embed too few training/validation structures to fit its head")
    rows = np.concatenate([tr, va])
    feats = structure_features(teacher, [records[i] for i in rows], ks, cache_dir=cfg.cache_dir, workers=cfg.workers)
    x = np.zeros((len(records), feats.shape[1]))
    x[rows] = feats
    fitted = fit_head(x, y, normalizer, {"train": tr, "val": va, "test": np.zeros(0, dtype=np.int64)}, seed=cfg.seed)
    # 2. the corpus: every structure outside the run's splits, a seeded subsample
    graphs, kept, n_excluded, n_bad = corpus_outside_splits(
        p.data, p.max_structures, cfg.seed if cfg.split_seed is None else cfg.split_seed, teacher, records, splits,
        featurizer, cfg.cache_dir, cfg.workers, progress)
    xc = structure_features(teacher, kept, ks, cache_dir=cfg.cache_dir, workers=cfg.workers, progress=progress)
    labels = normalizer.decode(apply_head(fitted["head"], fitted["mean"], fitted["std"], xc))
    info = {"teacher": teacher.spec, "teacher_fingerprint": teacher.fingerprint,
            "teacher_trained_on": teacher.training.to_dict(),
            "teacher_leaks_target": leaked,
            "head": fitted["chosen"], "head_val_mae": fitted["candidates"][fitted["chosen"]],
            "head_n_train": int(len(tr)), "head_n_val": int(len(va)), "corpus": str(p.data),
            "n_labelled": len(graphs), "n_excluded_in_splits": n_excluded,
            "n_skipped": n_bad + len(graphs.problems), "weight": p.weight, "ratio": p.ratio,
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("teacher-labelled corpus: %s + %s (val MAE %.4g) labelled %d structures of %s (%d in this run's "
             "splits excluded) in %.0f s", teacher.spec, fitted["chosen"], info["head_val_mae"], len(graphs), p.data,
             n_excluded, info["seconds"])
    return PseudoLabels(graphs, np.asarray(labels, dtype=np.float64).reshape(len(graphs), -1), info)


def corpus_outside_splits(data: str, max_structures: int, seed: int, teacher, records: list[Record],
                          splits: dict[str, np.ndarray], featurizer, cache_dir=None, workers: int = 1, progress=None):
    """The corpus structures a run may use: outside its splits (matched by content, not id), a
    subsample of ``max_structures`` (seeded by ``seed``; 0 = all), that the teacher can embed and
    the student can represent (the rest skipped).

    Returns:
        ``(graphs, records aligned with graphs, structures excluded as in the splits, structures
        the teacher cannot embed)``.

    Raises:
        UserError: no structure left.
    """
    from crysdistill.distill.cache import check_records

    corpus, keys = _corpus(data)
    in_splits = {structure_key(records[i].structure) for v in splits.values() for i in v}
    cands = [r for r, k in zip(corpus.records, keys) if k not in in_splits]
    n_excluded = len(corpus.records) - len(cands)
    if max_structures and len(cands) > max_structures:
        pick = np.sort(np.random.default_rng(seed).choice(len(cands), max_structures, replace=False))
        cands = [cands[i] for i in pick]
    if not cands:
        raise UserError(f"{data}: every corpus structure is in this run's splits; the corpus must hold other "
                        "structures")
    cands, bad = check_records(teacher, cands, on_error="skip")
    graphs = build_graphs(cands, featurizer, cache_dir=cache_dir, workers=workers, on_error="skip",
                          progress=progress)
    if len(graphs) == 0:
        raise UserError(f"{data}: no corpus structure is left outside this run's splits for the teacher")
    by_id = {r.id: r for r in cands}
    return graphs, [by_id[i] for i in graphs.ids], n_excluded, len(bad)


def _own_labels(cfg, teacher, records, splits, featurizer, progress, t0: float, leaked: bool) -> PseudoLabels:
    """Label the corpus with a fine-tuned teacher's own predictions (its head was chosen on its own
    validation split when it was fine-tuned; ``check_unseen`` has refused it if it saw this run's test)."""
    from crysdistill.train.finetune import own_predictions

    p, ckpt = cfg.pseudo, teacher.ckpt
    graphs, kept, n_excluded, n_bad = corpus_outside_splits(
        p.data, p.max_structures, cfg.seed if cfg.split_seed is None else cfg.split_seed, teacher, records, splits,
        featurizer, cfg.cache_dir, cfg.workers, progress)
    pred = own_predictions(teacher, [r.structure for r in kept], progress=progress)
    cols = [list(ckpt["targets"]).index(t) for t in cfg.targets]
    labels = np.asarray(pred, dtype=np.float64)[:, cols].reshape(len(graphs), -1)
    info = {"teacher": teacher.spec, "teacher_fingerprint": teacher.fingerprint,
            "teacher_trained_on": teacher.training.to_dict(),
            "teacher_leaks_target": leaked,
            "head": "own (fine-tuned)", "head_val_mae": ckpt.get("val_mae"),
            "head_n_train": int(ckpt["fine_tuned_on"]["n_train"]), "head_n_val": int(ckpt["fine_tuned_on"]["n_val"]),
            "corpus": str(p.data), "n_labelled": len(graphs), "n_excluded_in_splits": n_excluded,
            "n_skipped": n_bad + len(graphs.problems), "weight": p.weight, "ratio": p.ratio,
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("teacher-labelled corpus: fine-tuned %s (its own head, val MAE %s) labelled %d structures of %s (%d in "
             "this run's splits excluded) in %.0f s", teacher.spec, ckpt.get("val_mae"), len(graphs), p.data,
             n_excluded, info["seconds"])
    return PseudoLabels(graphs, labels, info)
