"""Kernel ridge regression on averaged teacher embeddings (the "GE" descriptor baseline of NEGNN).

Each structure is described by the mean over its atoms of the teacher's L2-normalised atom
embeddings of a few layers, concatenated (default layers 0, 1 and 2: NEGNN's multi-scale
embeddings), or by plain composition features. Kernel ridge regression (scikit-learn
``KernelRidge``, RBF or Laplacian kernel) is fitted on the training split; the kernel, the penalty
``alpha`` and the kernel width ``gamma`` are chosen on the validation split from a small grid
(``gamma`` as multiples of the median-distance heuristic), and the test split is evaluated once.
Splits follow ``crysdistill train`` (:func:`crysdistill.train.splits.make_splits`).

With a few hundred labels the whole run takes seconds, which makes it the first thing to try,
and the yardstick any distilled student must beat.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from crysdistill.distill.cache import normalize_layers
from crysdistill.errors import UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.teacher.probe import (
    DataLike,
    atomic_numbers,
    check_layers,
    composition_features,
    labelled,
    regression_metrics,
    structure_embeddings,
    teacher_graphs,
    untrained_twin,
)
from crysdistill.teachers.base import TeacherAdapter
from crysdistill.train.splits import make_splits

log = logging.getLogger("crysdistill")

#: Feature kinds: the teacher's averaged embeddings, those of its untrained twin, composition.
FEATURES = ("teacher", "untrained", "composition")
KERNELS = ("rbf", "laplacian")
DEFAULT_LAYERS = (0, 1, 2)
DEFAULT_ALPHAS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: ``gamma`` = scale / median distance (squared Euclidean for RBF, L1 for Laplacian) on training pairs.
DEFAULT_GAMMA_SCALES: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Fewest labelled structures accepted (one each for training, validation and test is not a result).
MIN_LABELLED = 10
#: Kernel ridge needs an ``n × n`` kernel: refuse training sets beyond this.
MAX_TRAIN = 30000
#: Up to this many training structures, BLAS runs on one thread: small solves are fastest that
#: way, and several BLAS threads on a busy machine made a 200 × 200 solve 200 times slower.
SINGLE_THREAD_MAX = 5000


@dataclass
class KRRResult:
    """What :func:`run_krr` measured.

    Attributes:
        target: the label.
        features: ``"teacher"``, ``"untrained"`` or ``"composition"``.
        layers: teacher layers averaged (empty for composition features).
        kernel: chosen kernel.
        alpha: chosen penalty (on the z-normalised target).
        gamma: chosen kernel width.
        n_train, n_val, n_test: split sizes.
        val_mae: validation MAE of the chosen hyperparameters.
        test_mae: test MAE (NaN without a test split).
        test_r2: test R².
        mean_test_mae: test MAE of predicting the training mean.
        seed: split seed.
        dim: feature width.
        seconds: the whole run (reading, graphs, embeddings, fitting).
        fit_seconds: the hyperparameter search and final fit.
        teacher: teacher path and fingerprint (``None`` for composition features).
        n_skipped: records skipped as unreadable or without the label.
        data: the dataset.
        grid: validation MAE of every grid point ``{"kernel", "alpha", "gamma", "val_mae"}``.
    """

    target: str
    features: str
    layers: list[int]
    kernel: str
    alpha: float
    gamma: float
    n_train: int
    n_val: int
    n_test: int
    val_mae: float
    test_mae: float
    test_r2: float
    mean_test_mae: float
    seed: int
    dim: int
    seconds: float
    fit_seconds: float
    teacher: str | None = None
    n_skipped: int = 0
    data: str = ""
    grid: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kernel(kind: str, a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    from sklearn.metrics.pairwise import laplacian_kernel, rbf_kernel

    return rbf_kernel(a, b, gamma=gamma) if kind == "rbf" else laplacian_kernel(a, b, gamma=gamma)


def median_gamma(kind: str, x: np.ndarray, max_rows: int = 2000, seed: int = 0) -> float:
    """``1 / median`` pairwise distance of rows of ``x`` (squared Euclidean for RBF, L1 for Laplacian).

    Args:
        kind: ``"rbf"`` or ``"laplacian"``.
        x: ``(n, F)`` training features.
        max_rows: rows sampled for the median.
        seed: sampling seed.
    """
    from sklearn.metrics.pairwise import manhattan_distances

    rng = np.random.default_rng(seed)
    rows = x if len(x) <= max_rows else x[rng.choice(len(x), max_rows, replace=False)]
    if kind == "rbf":
        sq = (rows**2).sum(axis=1)
        d = np.clip(sq[:, None] + sq[None, :] - 2 * rows @ rows.T, 0.0, None)
    else:
        d = manhattan_distances(rows)
    d = d[np.triu_indices(len(rows), k=1)]
    d = d[d > 0]
    med = float(np.median(d)) if len(d) else 1.0
    return 1.0 / med


def fit_krr(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray], kernels: Sequence[str] = KERNELS,
            alphas: Sequence[float] = DEFAULT_ALPHAS, gamma_scales: Sequence[float] = DEFAULT_GAMMA_SCALES,
            seed: int = 0) -> dict[str, Any]:
    """Kernel ridge regression with kernel, ``alpha`` and ``gamma`` chosen on the validation split.

    The target is z-normalised with the training mean and standard deviation; features are used as
    they are. Each grid point is fitted on the training split only.

    Args:
        x: ``(B, F)`` features.
        y: ``(B,)`` targets.
        splits: ``{"train", "val", "test"}`` row indices (see :func:`make_splits`).
        kernels: kernels tried (``"rbf"``, ``"laplacian"``).
        alphas: penalties tried.
        gamma_scales: multiples of :func:`median_gamma` tried.
        seed: seed of the median heuristic's sampling.

    Returns:
        ``{"kernel", "alpha", "gamma", "val_mae", "grid", "pred"}`` with ``pred`` a dict of
        predictions ``(n_split,)`` for ``"train"``, ``"val"`` and ``"test"``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if len(splits["train"]) <= SINGLE_THREAD_MAX else None):
        return _fit_krr(x, y, splits, kernels, alphas, gamma_scales, seed)


def _fit_krr(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray], kernels: Sequence[str],
             alphas: Sequence[float], gamma_scales: Sequence[float], seed: int) -> dict[str, Any]:
    from sklearn.kernel_ridge import KernelRidge

    tr, va = splits["train"], splits["val"]
    mean, std = float(y[tr].mean()), float(y[tr].std()) or 1.0
    yz = (y[tr] - mean) / std
    grid, best = [], None
    for kind in kernels:
        if kind not in KERNELS:
            raise UserError(f"unknown kernel {kind!r}; available: {', '.join(KERNELS)}")
        g0 = median_gamma(kind, x[tr], seed=seed)
        for scale in gamma_scales:
            gamma = g0 * scale
            k_tr = _kernel(kind, x[tr], x[tr], gamma)
            k_va = _kernel(kind, x[va], x[tr], gamma)
            for alpha in alphas:
                model = KernelRidge(alpha=alpha, kernel="precomputed").fit(k_tr, yz)
                val_mae = float(np.mean(np.abs(model.predict(k_va) * std + mean - y[va])))
                grid.append({"kernel": kind, "alpha": float(alpha), "gamma": float(gamma), "val_mae": val_mae})
                if best is None or val_mae < best["val_mae"]:
                    best = {**grid[-1], "model": model}
    assert best is not None
    model = best.pop("model")
    pred = {name: model.predict(_kernel(best["kernel"], x[idx], x[tr], best["gamma"])) * std + mean
            if len(idx) else np.zeros(0) for name, idx in splits.items()}
    return {**best, "grid": grid, "pred": pred}


def krr_features(kind: str, teacher: Teacher | None, graphs, indices: np.ndarray, layers: Sequence[int],
                 cache_dir: str | os.PathLike | None = None, seed: int = 0) -> np.ndarray:
    """Per-structure descriptors ``(len(indices), F)`` of one kind.

    Args:
        kind: ``"teacher"`` (mean of the teacher's L2-normalised atom embeddings of ``layers``,
            concatenated), ``"untrained"`` (the same for the untrained twin seeded with ``seed``) or
            ``"composition"`` (element fractions plus weighted mean and std of the atom features).
        teacher: the teacher (its graph settings define ``graphs``).
        graphs: structures built with the teacher's graph settings (see :func:`teacher_graphs`).
        indices: positions in ``graphs``.
        layers: resolved layer indices.
        cache_dir: embedding cache folder.
        seed: seed of the untrained twin.
    """
    if kind == "composition":
        atom_features = teacher.graph_settings.atom_features if teacher is not None else "cgcnn"
        return composition_features(atomic_numbers(graphs, indices.tolist()), atom_features)
    if kind not in FEATURES:
        raise UserError(f"unknown features {kind!r}; available: {', '.join(FEATURES)}")
    model = teacher if kind == "teacher" else untrained_twin(teacher, seed)
    return structure_embeddings(model, graphs, layers, indices=indices.tolist(), cache_dir=cache_dir)["graph"]


def run_krr(
    teacher: Teacher,
    data: DataLike,
    target: str,
    layers: Sequence[int] | None = DEFAULT_LAYERS,
    features: str = "teacher",
    train_size: float | None = None,
    val_size: float | None = None,
    test_size: float | None = None,
    seed: int = 0,
    kernels: Sequence[str] = KERNELS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    gamma_scales: Sequence[float] = DEFAULT_GAMMA_SCALES,
    output: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    on_error: str = "raise",
    limit: int | None = None,
    source: str | None = None,
) -> KRRResult:
    """Kernel ridge regression of ``target`` from averaged teacher embeddings (or composition).

    Structures without a numeric ``target`` are dropped; the rest are split with
    :func:`make_splits` (sizes are counts or fractions; ``None`` = the rest for training, 10 % for
    validation and test), as ``crysdistill train`` does. Only structures in a split are embedded.

    Args:
        teacher: the loaded CrysGNN teacher (also defines the graphs for composition features), or
            any teacher plugin (its embeddings of every layer by default; its untrained twin is its
            :meth:`~crysdistill.teachers.base.TeacherAdapter.random_twin`).
        data: a dataset path, :class:`~crysdistill.data.Dataset`, records or teacher graph set.
        target: label to predict.
        layers: teacher layers averaged (default 0, 1, 2; ``None`` = every layer).
        features: ``"teacher"``, ``"untrained"`` or ``"composition"``.
        train_size, val_size, test_size: split sizes (counts or fractions).
        seed: split seed (and seed of the untrained twin).
        kernels: kernels tried on validation (``"rbf"``, ``"laplacian"``).
        alphas: penalties tried.
        gamma_scales: multiples of the median heuristic tried for ``gamma``.
        output: write test predictions as CSV (``id, target, prediction``) here.
        cache_dir: graph and embedding cache folder.
        workers: graph-building processes.
        on_error: ``"raise"`` or ``"skip"`` for bad records.
        limit: read at most this many records from a path.
        source: name of the data in messages and in the result (default: the path, if ``data`` is one).

    Raises:
        UserError: unknown target (the message lists the labels), a layer out of range, too few
            labelled structures, splits that do not fit, or a training set too large for a kernel.
    """
    t0 = time.perf_counter()
    plugin = None
    if isinstance(teacher, TeacherAdapter):  # a teacher plugin that is not a CrysGNN checkpoint
        from crysdistill.data.graph import GraphSettings
        from crysdistill.data.readers import Dataset, read_dataset
        from crysdistill.teacher.encoder import CrysGNNEncoder

        plugin = teacher if features != "untrained" else teacher.random_twin(seed)
        if isinstance(data, (str, os.PathLike)):
            data = read_dataset(data, on_error=on_error, limit=limit)
        if not isinstance(data, Dataset):
            raise UserError(f"krr with {plugin.spec} needs a dataset path or a Dataset")
        ks = normalize_layers(layers, plugin.n_layers) if layers else list(range(plugin.n_layers + 1))
        # the graphs only carry ids, labels and atomic numbers here: default settings, shared with CGCNN
        teacher = Teacher(CrysGNNEncoder().eval(), GraphSettings(), plugin.fingerprint, {}, plugin.spec)
    else:
        ks = check_layers(teacher, layers) if features != "composition" else []
    if source is None:
        source = str(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "source", "data")
    graphs = teacher_graphs(teacher, data, cache_dir=cache_dir, workers=workers, on_error=on_error, limit=limit)
    lab_idx, y = labelled(graphs, target, minimum=MIN_LABELLED, source=source)
    splits = make_splits(len(lab_idx), train_size, val_size, test_size, seed)
    if len(splits["train"]) > MAX_TRAIN:
        raise UserError(f"kernel ridge regression on {len(splits['train'])} training structures needs an n×n kernel; "
                        f"use --train-size {MAX_TRAIN} or fewer")
    used = np.concatenate([splits["train"], splits["val"], splits["test"]])
    if plugin is not None and features != "composition":
        from crysdistill.distill.cache import check_records
        from crysdistill.train.head import structure_features

        by_id = {r.id: r for r in data.records}
        chosen, _ = check_records(plugin, [by_id[graphs.ids[i]] for i in lab_idx[used]])
        x_used = structure_features(plugin, chosen, ks, cache_dir=cache_dir)
    else:
        x_used = krr_features(features, teacher, graphs, lab_idx[used], ks, cache_dir=cache_dir, seed=seed)
    x = np.zeros((len(lab_idx), x_used.shape[1]), dtype=np.float64)
    x[used] = x_used
    t_fit = time.perf_counter()
    fit = fit_krr(x, y, splits, kernels=kernels, alphas=alphas, gamma_scales=gamma_scales, seed=seed)
    fit_seconds = time.perf_counter() - t_fit
    test = splits["test"]
    if len(test):
        metrics = regression_metrics(y[test], fit["pred"]["test"])
        mean_mae = float(np.mean(np.abs(y[test] - y[splits["train"]].mean())))
    else:
        metrics, mean_mae = {"mae": float("nan"), "r2": float("nan")}, float("nan")
    if output is not None:
        with open(output, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "target", "prediction"])
            for k, i in enumerate(test):
                w.writerow([graphs.ids[lab_idx[i]], repr(float(y[i])), repr(float(fit["pred"]["test"][k]))])
    return KRRResult(
        target=target, features=features, layers=ks, kernel=fit["kernel"], alpha=fit["alpha"], gamma=fit["gamma"],
        n_train=len(splits["train"]), n_val=len(splits["val"]), n_test=len(test), val_mae=fit["val_mae"],
        test_mae=metrics["mae"], test_r2=metrics["r2"], mean_test_mae=mean_mae, seed=seed, dim=int(x.shape[1]),
        seconds=time.perf_counter() - t0, fit_seconds=fit_seconds,
        teacher=None if features == "composition" else f"{teacher.path} ({teacher.fingerprint})",
        n_skipped=len(graphs.problems) + len(graphs) - len(lab_idx), data=source, grid=fit["grid"],
    )


def format_krr(result: KRRResult) -> str:
    """One readable paragraph for a :class:`KRRResult`."""
    what = ("composition features" if result.features == "composition" else
            f"{'untrained twin of ' if result.features == 'untrained' else ''}teacher {result.teacher}, "
            f"layers {','.join(map(str, result.layers))} averaged over atoms")
    return "\n".join([
        f"kernel ridge regression of {result.target} on {what} ({result.dim} features)",
        f"split       {result.n_train} train / {result.n_val} validation / {result.n_test} test (seed {result.seed})",
        f"chosen      {result.kernel} kernel, alpha {result.alpha:.3g}, gamma {result.gamma:.3g} "
        f"(validation MAE {result.val_mae:.4f})",
        f"test        MAE {result.test_mae:.4f}, R² {result.test_r2:.4f} "
        f"(predicting the training mean: MAE {result.mean_test_mae:.4f})",
        f"time        {result.seconds:.1f} s ({result.fit_seconds:.2f} s fitting)",
    ])
