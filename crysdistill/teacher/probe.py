"""What a teacher's embeddings carry: element dependence, collapse, and a linear probe of a target.

A teacher only helps a student if its atom embeddings say more than the element, which the
student already sees in its input features. :func:`probe_teacher` measures, for any teacher:

* per layer (0 = the input embedding, a linear map of the element's feature vector, … ``L`` =
  the last convolution), the share of the variance of the L2-normalised atom embeddings that the
  element alone explains,

  .. math::
      R^2_\\mathrm{element} = 1 - \\frac{\\sum_a \\lVert e_a - \\bar e_{Z(a)} \\rVert^2}
                                      {\\sum_a \\lVert e_a - \\bar e \\rVert^2},

  (1 for layer 0 by construction; close to 1 when the convolutions added little), and the mean
  cosine similarity of random pairs of atom embeddings (close to 1 when the embeddings collapsed
  onto one direction);
* a ridge probe of a target from the per-structure mean of the L2-normalised atom embeddings of
  the chosen layers, on a fixed seeded train/test split, next to the same probe on an untrained
  twin of the teacher (same architecture, seeded random weights, evaluation mode), on plain
  composition features and on predicting the training mean, all measured in the same run.

Embeddings come from the cached teacher forward pass (:func:`crysdistill.distill.cache.teacher_embeddings`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from crysdistill.data.cache import GraphSet, build_graphs
from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import CrystalGraphFeaturizer
from crysdistill.data.readers import Dataset, read_dataset
from crysdistill.data.records import Record
from crysdistill.errors import UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig
from crysdistill.utils import state_fingerprint

log = logging.getLogger("crysdistill")

#: Element-fraction vectors cover Z = 1 … COMPOSITION_MAX_Z.
COMPOSITION_MAX_Z = 100

#: Ridge penalties tried on the internal validation split (features are standardised).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 5, 17))

#: Fewest labelled structures the probe accepts (test and internal validation need a few each).
MIN_LABELLED = 20

DataLike = str | os.PathLike | Dataset | GraphSet | Sequence[Record]


# ------------------------------------------------------------------------------------------------
# data, targets and teachers


def teacher_graphs(teacher: Teacher, data: DataLike, cache_dir: str | os.PathLike | None = None,
                   workers: int = 1, on_error: str = "raise", limit: int | None = None) -> GraphSet:
    """Graphs of ``data`` built with the teacher's graph settings, without symmetry labels (cached).

    Args:
        teacher: the teacher whose graph settings are used.
        data: a dataset path (any format of :func:`crysdistill.data.read_dataset`, read with
            ``on_error`` and ``limit``), a :class:`Dataset`, a list of records, or a
            :class:`GraphSet` already built with the teacher's graph settings (with or without
            symmetry labels).
        cache_dir: graph cache folder (default: ``$CRYSDISTILL_CACHE``).
        workers: graph-building processes.
        on_error: ``"raise"`` or ``"skip"`` for records that cannot be read or featurised.
        limit: read at most this many records from a path.

    Raises:
        UserError: unreadable data, a bad record with ``on_error="raise"``, or a graph set built
            with another featuriser.
    """
    # embeddings need no symmetry labels: without them the graphs share the cache with
    # CGCNN-family students (and spglib is not run)
    featurizer = CrystalGraphFeaturizer(replace(teacher.graph_settings, symmetry=False))
    if isinstance(data, GraphSet):
        accepted = (featurizer.fingerprint(), teacher.featurizer().fingerprint())
        if not data.store.path.name.endswith(accepted):
            raise UserError(f"{data.store.path}: graphs were built with another featuriser than the teacher's; "
                            "build them with the teacher's graph settings")
        return data
    problems = []
    if isinstance(data, (str, os.PathLike)):
        ds = read_dataset(data, on_error=on_error, limit=limit)
        records, problems = ds.records, list(ds.problems)
    elif isinstance(data, Dataset):
        records, problems = data.records, list(data.problems)
    else:
        records = list(data)
    graphs = build_graphs(records, featurizer, cache_dir=cache_dir, workers=workers, on_error=on_error)
    graphs.problems = problems + graphs.problems
    return graphs


def label_keys(graphs: GraphSet) -> list[str]:
    """Label keys present in at least one structure of ``graphs``, in first-seen order."""
    keys: dict[str, None] = {}
    for labels in graphs.labels:
        for k in labels:
            keys.setdefault(k, None)
    return list(keys)


def labelled(graphs: GraphSet, target: str, minimum: int = 1, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Positions of the structures with a numeric ``target`` and their values.

    Returns:
        ``(indices, y)``: ``(n,)`` positions in ``graphs`` and ``(n,)`` float64 values.

    Raises:
        UserError: ``target`` is not a label of ``graphs`` (the message lists those present), or
            fewer than ``minimum`` structures have it.
    """
    present = label_keys(graphs)
    if target not in present:
        raise UserError(f"{source}: target {target!r} not found; labels present: "
                        f"{', '.join(present) if present else 'none'}")
    idx, ys = [], []
    for i, labels in enumerate(graphs.labels):
        v = labels.get(target)
        if v is not None and np.isfinite(v):
            idx.append(i)
            ys.append(float(v))
    if len(idx) < minimum:
        raise UserError(f"{source}: only {len(idx)} structure(s) have a numeric {target!r}; at least {minimum} "
                        "are needed; use more data")
    return np.asarray(idx, dtype=np.int64), np.asarray(ys, dtype=np.float64)


def check_layers(teacher: Teacher, layers: Sequence[int] | None) -> list[int]:
    """Resolve layer indices (``None`` → every layer ``0…L``; negatives count from the end).

    Raises:
        UserError: a layer the teacher does not have.
    """
    n = teacher.encoder.config.layers
    if layers is None or len(layers) == 0:
        return list(range(n + 1))
    out: list[int] = []
    for layer in layers:
        k = int(layer) if layer >= 0 else n + 1 + int(layer)
        if not 0 <= k <= n:
            raise UserError(f"layer {layer} does not exist: the teacher has layers 0…{n} "
                            f"(0 = input embedding, {n} = last convolution)")
        if k not in out:
            out.append(k)
    return out


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,1,2"`` → ``[0, 1, 2]``; ``None`` or ``""`` → ``None``.

    Raises:
        UserError: not comma-separated integers.
    """
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--layers must be comma-separated integers (e.g. 0,1,2), not {text!r}") from None


def untrained_twin(teacher: Teacher, seed: int = 0) -> Teacher:
    """A teacher of the same architecture and graph settings with seeded random weights.

    The encoder is built after ``torch.manual_seed(seed)`` (the global random state is restored
    afterwards) and put in evaluation mode, so its BatchNorm layers use their initial statistics.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CrysGNNEncoder(EncoderConfig(**teacher.encoder.config.to_dict()))
    encoder.eval()
    encoder.requires_grad_(False)
    fp = state_fingerprint(encoder.state_dict())
    return Teacher(encoder, teacher.graph_settings, fp, {"untrained_twin_of": teacher.fingerprint, "seed": seed},
                   path=f"untrained twin of {teacher.path or teacher.fingerprint} (seed {seed})")


# ------------------------------------------------------------------------------------------------
# features


def structure_embeddings(teacher: Teacher, graphs: GraphSet, layers: Sequence[int],
                         indices: Sequence[int] | None = None, cache_dir: str | os.PathLike | None = None,
                         nodes_of: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Cached teacher embeddings of some structures, each layer L2-normalised per atom.

    Args:
        teacher: the (frozen) teacher.
        graphs: structures built with the teacher's graph settings (see :func:`teacher_graphs`).
        layers: resolved layer indices ``K`` (see :func:`check_layers`), concatenated in this order.
        indices: structures to embed (default: all).
        cache_dir: cache folder of the embeddings.
        nodes_of: positions within ``indices`` whose atom embeddings are also returned.

    Returns:
        ``graph`` ``(B, D·K)`` float64 per-structure means; with ``nodes_of``, also ``node``
        ``(N, D·K)`` float32 atom embeddings of those structures, concatenated in site order.
    """
    from crysdistill.distill.cache import teacher_embeddings

    idx = list(range(len(graphs))) if indices is None else [int(i) for i in indices]
    emb = teacher_embeddings(teacher, graphs.subset(idx), list(layers), cache_dir=cache_dir)
    out: dict[str, np.ndarray] = {}
    graph = np.empty((len(idx), emb.dim), dtype=np.float64)
    wanted = set(nodes_of or [])
    nodes: dict[int, np.ndarray] = {}
    for b, key in enumerate(emb.keys):
        arrays = emb.store.get(key)
        graph[b] = arrays["graph"]
        if b in wanted:
            nodes[b] = np.array(arrays["node"], dtype=np.float32)
    emb.store.close()
    out["graph"] = graph
    if nodes_of is not None:
        out["node"] = (np.concatenate([nodes[b] for b in nodes_of]) if len(nodes_of)
                       else np.zeros((0, emb.dim), dtype=np.float32))
    return out


def atomic_numbers(graphs: GraphSet, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Atomic numbers ``(n_sites,)`` of each structure, in site order (from the cached graphs)."""
    idx = range(len(graphs)) if indices is None else indices
    return [np.asarray(graphs[int(i)]["z"], dtype=np.int64) for i in idx]


def composition_features(numbers: Sequence[np.ndarray], atom_features: str | None = "cgcnn") -> np.ndarray:
    """Plain composition descriptors of structures.

    Args:
        numbers: atomic numbers ``(n_sites,)`` of each structure.
        atom_features: also append the fraction-weighted mean and standard deviation of this atom
            feature table (``"cgcnn"``: 92 bits), or ``None`` for element fractions only.

    Returns:
        ``(B, 100)`` element fractions over Z = 1…100, or ``(B, 100 + 2F)`` with the weighted mean
        and standard deviation of the ``F`` atom features.
    """
    fractions = np.zeros((len(numbers), COMPOSITION_MAX_Z), dtype=np.float64)
    for b, z in enumerate(numbers):
        z = z[(z >= 1) & (z <= COMPOSITION_MAX_Z)]
        if len(z):
            np.add.at(fractions[b], z - 1, 1.0 / len(z))
    if atom_features is None:
        return fractions
    table = atom_feature_table(atom_features)[0][1:COMPOSITION_MAX_Z + 1].astype(np.float64)  # (100, F)
    mean = fractions @ table
    std = np.sqrt(np.clip(fractions @ table**2 - mean**2, 0.0, None))
    return np.concatenate([fractions, mean, std], axis=1)


# ------------------------------------------------------------------------------------------------
# embedding statistics


def element_r2(node: np.ndarray, numbers: np.ndarray) -> float:
    """Share of the variance of atom embeddings explained by the element alone.

    Args:
        node: ``(N, D)`` atom embeddings.
        numbers: ``(N,)`` atomic numbers.

    Returns:
        ``1 − SS_within / SS_total``: 1 when every atom of an element has the same embedding;
        NaN when all embeddings are equal.
    """
    x = np.asarray(node, dtype=np.float64)
    _, inverse, counts = np.unique(numbers, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    ss_within = float(((x - means[inverse]) ** 2).sum())
    ss_total = float(((x - x.mean(axis=0)) ** 2).sum())
    if ss_total <= 1e-12 * max(1, x.size):
        return float("nan")
    return 1.0 - ss_within / ss_total


def mean_pairwise_cosine(node: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> float:
    """Mean cosine similarity of random pairs of distinct atoms (with replacement).

    Args:
        node: ``(N, D)`` atom embeddings, ``N >= 2``.
        n_pairs: pairs sampled.
        seed: sampling seed.

    Returns:
        a value in ``[-1, 1]``; near 1 when the embeddings have collapsed onto one direction.
    """
    n = node.shape[0]
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never i
    x = np.asarray(node, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1).clip(min=1e-12)
    cos = (x[i] * x[j]).sum(axis=1) / (norms[i] * norms[j])
    return float(np.clip(cos.mean(), -1.0, 1.0))


def effective_rank(node: np.ndarray) -> float:
    """Effective dimension of atom embeddings: ``exp`` of the entropy of the covariance spectrum.

    Args:
        node: ``(N, D)`` atom embeddings.

    Returns:
        a value in ``[1, D]`` (1 when all variance lies along one direction; NaN without variance).
    """
    x = np.asarray(node, dtype=np.float64)
    x = x - x.mean(axis=0)
    ev = np.clip(np.linalg.eigvalsh(x.T @ x), 0.0, None)
    if ev.sum() <= 0:
        return float("nan")
    p = ev / ev.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def layer_statistics(node: np.ndarray, numbers: np.ndarray, layers: Sequence[int], width: int | Sequence[int],
                     n_pairs: int = 20000, seed: int = 0) -> list[dict[str, float]]:
    """Element R² and mean pairwise cosine of each layer block of concatenated atom embeddings.

    Args:
        node: ``(N, width · K)`` atom embeddings, layer ``layers[k]`` in columns ``k·width … (k+1)·width``.
        numbers: ``(N,)`` atomic numbers.
        layers: the ``K`` layer indices.
        width: columns per layer (one number, or one per layer).
        n_pairs: atom pairs sampled for the cosine.
        seed: sampling seed.

    Returns:
        ``[{"layer", "element_r2", "mean_cosine", "effective_rank"}, …]``, one per layer.
    """
    widths = [width] * len(layers) if isinstance(width, int) else list(width)
    starts = np.concatenate([[0], np.cumsum(widths)])
    out = []
    for k, layer in enumerate(layers):
        block = node[:, starts[k]:starts[k + 1]]
        out.append({"layer": int(layer), "element_r2": element_r2(block, numbers),
                    "mean_cosine": mean_pairwise_cosine(block, n_pairs, seed),
                    "effective_rank": effective_rank(block)})
    return out


# ------------------------------------------------------------------------------------------------
# ridge probe


def _standardise(x_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _ridge_predictions(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray,
                       alphas: Sequence[float]) -> np.ndarray:
    """Closed-form ridge (standardised features, intercept) for several penalties at once.

    Returns:
        ``(len(alphas), n_eval)`` predictions.
    """
    mean, std = _standardise(x_fit)
    xf = (x_fit - mean) / std
    xe = (x_eval - mean) / std
    y_mean = y_fit.mean()
    u, s, vt = np.linalg.svd(xf, full_matrices=False)
    uty = u.T @ (y_fit - y_mean)
    proj = xe @ vt.T  # (n_eval, r)
    return np.stack([proj @ (s / (s**2 + a) * uty) + y_mean for a in alphas])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``{"mae", "r2"}`` (R² = 1 − SS_res / SS_tot around the mean of ``y_true``)."""
    mae = float(np.mean(np.abs(y_true - y_pred)))
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - float(((y_true - y_pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"mae": mae, "r2": r2}


def ridge_probe(x: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, test_idx: np.ndarray, seed: int = 0,
                val_fraction: float = 0.2, alphas: Sequence[float] = DEFAULT_ALPHAS) -> dict[str, float]:
    """Linear probe: ridge regression with the penalty chosen on an internal validation split.

    The fitting structures are split once more (seeded); the penalty with the lowest validation MAE
    is kept and the model refitted on all fitting structures, then evaluated once on the test part.

    Args:
        x: ``(B, F)`` features.
        y: ``(B,)`` targets.
        fit_idx: rows used for fitting (and the internal validation).
        test_idx: rows for the evaluation.
        seed: seed of the internal split.
        val_fraction: share of ``fit_idx`` held out to choose the penalty.
        alphas: penalties tried.

    Returns:
        ``{"mae", "r2", "alpha", "val_mae", "dim"}``.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    perm = rng.permutation(fit_idx)
    n_val = max(1, int(round(val_fraction * len(perm))))
    inner_val, inner_fit = perm[:n_val], perm[n_val:]
    with threadpool_limits(limits=1 if len(fit_idx) <= 20000 else None):  # small SVDs: one BLAS thread is fastest
        val_pred = _ridge_predictions(x[inner_fit], y[inner_fit], x[inner_val], alphas)
        val_mae = np.abs(val_pred - y[inner_val]).mean(axis=1)
        best = int(np.argmin(val_mae))
        pred = _ridge_predictions(x[fit_idx], y[fit_idx], x[test_idx], [alphas[best]])[0]
    return {**regression_metrics(y[test_idx], pred), "alpha": float(alphas[best]),
            "val_mae": float(val_mae[best]), "dim": int(x.shape[1])}


def mean_baseline(y: np.ndarray, fit_idx: np.ndarray, test_idx: np.ndarray) -> dict[str, float]:
    """Predict the mean of the fitting targets for every test structure: ``{"mae", "r2"}``."""
    return regression_metrics(y[test_idx], np.full(len(test_idx), y[fit_idx].mean()))


def holdout_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(fit, test)`` positions of ``range(n)``: the test part is the end of one permutation."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return np.sort(perm[:n - n_test]), np.sort(perm[n - n_test:])


# ------------------------------------------------------------------------------------------------
# the whole probe


def _probe_rows(target: str, graph_features: dict[str, np.ndarray], y: np.ndarray, lab_idx: np.ndarray,
                starts: Sequence[int], ks: Sequence[int], seed: int, test_fraction: float, composition: np.ndarray,
                twin_features, n_untrained: int) -> tuple[dict[str, Any], bool | None]:
    """The ridge probes of :func:`probe_teacher` and :func:`probe_plugin`: ``(probe, beats_untrained)``.

    ``graph_features`` maps ``teacher``/``untrained`` to per-structure features of every structure
    (layer ``ks[k]`` in columns ``starts[k]:starts[k + 1]``); ``composition`` are the composition
    features of the labelled structures; ``twin_features(s)`` gives twin ``s``'s features of the
    labelled structures (twins ``seed, seed + 1, …``; the first is ``graph_features["untrained"]``).
    """
    fit, test = holdout_split(len(lab_idx), test_fraction, seed)
    rows: dict[str, dict[str, float]] = {}
    per_layer: dict[str, list[dict[str, float]]] = {}
    for name, feats in graph_features.items():
        x = feats[lab_idx]
        rows[name] = ridge_probe(x, y, fit, test, seed)
        per_layer[name] = [{"layer": int(layer), **ridge_probe(x[:, starts[k]:starts[k + 1]], y, fit, test, seed)}
                           for k, layer in enumerate(ks)] if len(ks) > 1 else []
    rows["composition"] = ridge_probe(composition, y, fit, test, seed)
    rows["mean"] = mean_baseline(y, fit, test)
    twins = []
    for s in [seed + k for k in range(max(0, n_untrained))]:
        row = rows["untrained"] if s == seed else ridge_probe(twin_features(s), y, fit, test, seed)
        twins.append({"seed": s, "mae": row["mae"], "r2": row["r2"], "alpha": row["alpha"]})
    probe = {"target": target, "n_labelled": int(len(lab_idx)), "n_fit": int(len(fit)), "n_test": int(len(test)),
             "test_fraction": test_fraction, "rows": rows, "untrained_twins": twins, "per_layer": per_layer}
    return probe, (bool(all(rows["teacher"]["mae"] < t["mae"] for t in twins)) if twins else None)


def probe_teacher(
    teacher: Teacher,
    data: DataLike,
    target: str | None = None,
    layers: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_stat_structures: int = 5000,
    n_pairs: int = 20000,
    n_untrained: int = 1,
    workers: int = 1,
    on_error: str = "raise",
    limit: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Measure what a teacher's embeddings carry beyond the element.

    Args:
        teacher: the loaded teacher.
        data: a dataset path, :class:`Dataset`, list of records or teacher :class:`GraphSet`.
        target: label to probe (``None``: embedding statistics only).
        layers: layers to analyse and, concatenated, to probe (default: every layer ``0…L``).
        cache_dir: graph and embedding cache folder.
        seed: seed of the train/test split, of the (first) untrained twin's weights and of the sampling.
        test_fraction: share of the labelled structures held out for the probe's test.
        max_stat_structures: embedding statistics use at most this many structures (seeded subset).
        n_pairs: atom pairs sampled for the mean cosine similarity.
        n_untrained: untrained twins probed, seeded ``seed, seed + 1, …`` (0: none). Their probe
            MAEs spread widely from seed to seed, so use several to judge a teacher; embedding
            statistics and per-layer probes are reported for the first.
        workers: graph-building processes.
        on_error: ``"raise"`` or ``"skip"`` for bad records.
        limit: read at most this many records from a path.
        source: name of the data in messages and in the result (default: the path, if ``data`` is one).

    Returns:
        A JSON-able dict: ``teacher``, ``fingerprint``, ``encoder``, ``layers``, ``n_structures``,
        ``n_atoms`` and ``n_elements`` (of the statistics subset), ``embedding`` (``{"teacher":
        [...], "untrained": [...]}`` per-layer ``element_r2`` and ``mean_cosine``), ``probe``
        (``None`` without a target; else ``target``, ``n_labelled``, ``n_fit``, ``n_test``,
        ``rows`` with ``mae``/``r2`` of ``teacher``, ``untrained`` (first twin), ``composition``,
        ``mean``, ``untrained_twins`` (``{"seed", "mae", "r2", "alpha"}`` of every twin) and
        ``per_layer``), ``beats_untrained`` (the teacher's probe MAE is lower than every twin's;
        ``None`` without a target or twins) and ``seconds``.

    Raises:
        UserError: unknown target (the message lists the labels), a layer out of range, fewer
            than :data:`MIN_LABELLED` labelled structures, or unreadable data.
    """
    t0 = time.perf_counter()
    ks = check_layers(teacher, layers)
    if source is None:
        source = str(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "source", "data")
    graphs = teacher_graphs(teacher, data, cache_dir=cache_dir, workers=workers, on_error=on_error, limit=limit)
    if target is not None:
        lab_idx, y = labelled(graphs, target, minimum=MIN_LABELLED, source=source)
    width = teacher.encoder.width
    rng = np.random.default_rng(seed)
    n = len(graphs)
    stat_pos = np.sort(rng.choice(n, size=min(n, max_stat_structures), replace=False))
    numbers = atomic_numbers(graphs)
    z_stat = np.concatenate([numbers[i] for i in stat_pos])

    models = {"teacher": teacher}
    if n_untrained > 0:
        models["untrained"] = untrained_twin(teacher, seed)
    embedding, graph_features = {}, {}
    for name, model in models.items():
        emb = structure_embeddings(model, graphs, ks, cache_dir=cache_dir, nodes_of=stat_pos.tolist())
        embedding[name] = layer_statistics(emb["node"], z_stat, ks, width, n_pairs, seed)
        graph_features[name] = emb["graph"]
        log.debug("probe: %s embedded in %.1f s", name, time.perf_counter() - t0)

    result: dict[str, Any] = {
        "teacher": teacher.path, "fingerprint": teacher.fingerprint, "encoder": teacher.encoder.config.to_dict(),
        "data": source, "layers": ks, "seed": seed, "n_structures": int(len(stat_pos)),
        "n_structures_total": int(n), "n_atoms": int(len(z_stat)), "n_elements": int(len(np.unique(z_stat))),
        "n_skipped": len(graphs.problems), "embedding": embedding, "probe": None, "beats_untrained": None,
    }
    if target is not None:
        result["probe"], result["beats_untrained"] = _probe_rows(
            target, graph_features, y, lab_idx, [k * width for k in range(len(ks) + 1)], ks, seed, test_fraction,
            composition_features([numbers[i] for i in lab_idx], teacher.graph_settings.atom_features),
            lambda s: structure_embeddings(untrained_twin(teacher, s), graphs, ks, indices=lab_idx.tolist(),
                                           cache_dir=cache_dir)["graph"], n_untrained)
    result["seconds"] = time.perf_counter() - t0
    return result


def probe_plugin(
    teacher,
    data: DataLike,
    target: str | None = None,
    layers: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_stat_structures: int = 5000,
    n_pairs: int = 20000,
    n_untrained: int = 1,
    workers: int = 1,
    on_error: str = "raise",
    limit: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """:func:`probe_teacher` for any teacher plugin (CHGNet, SevenNet-0, a third party's).

    The same statistics and ridge probes, computed from the plugin's own embeddings (cached, see
    :func:`crysdistill.distill.cache.embed_records`); the untrained twins are the plugin's
    :meth:`~crysdistill.teachers.base.TeacherAdapter.random_twin` (same architecture and graph
    builder, weights redrawn), and composition features use CGCNN's element table. Structures the
    teacher cannot embed stop the probe with one line naming them, or are skipped with
    ``on_error="skip"``. Arguments and result as :func:`probe_teacher`.
    """
    from types import SimpleNamespace

    from crysdistill.distill.cache import check_records, embed_records, normalize_layers
    from crysdistill.teachers.base import leaks

    t0 = time.perf_counter()
    if source is None:
        source = str(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "source", "data")
    if isinstance(data, (str, os.PathLike)):
        data = read_dataset(data, on_error=on_error, limit=limit)
    records = list(data.records if isinstance(data, Dataset) else data)
    records, problems = check_records(teacher, records, on_error=on_error)
    if not records:
        raise UserError(f"{source}: teacher {teacher.spec} can embed none of the structures")
    ks = normalize_layers(layers, teacher.n_layers) if layers is not None else list(range(teacher.n_layers + 1))
    widths = [int(teacher.layer_widths[k]) for k in ks]
    starts = np.concatenate([[0], np.cumsum(widths)])
    if target is not None:
        lab_idx, y = labelled(SimpleNamespace(labels=[r.labels for r in records]), target, minimum=MIN_LABELLED,
                              source=source)
    rng = np.random.default_rng(seed)
    n = len(records)
    stat_pos = np.sort(rng.choice(n, size=min(n, max_stat_structures), replace=False))
    numbers = [np.asarray(r.structure.atomic_numbers) for r in records]
    z_stat = np.concatenate([numbers[i] for i in stat_pos])

    def features(model) -> tuple[np.ndarray, np.ndarray]:
        emb = embed_records(model, records, ks, cache_dir=cache_dir, workers=workers)
        graph = np.stack([np.asarray(emb.store.get(k)["graph"], dtype=np.float64) for k in emb.keys])
        node = np.concatenate([np.asarray(emb.store.get(emb.keys[i])["node"], dtype=np.float32) for i in stat_pos])
        emb.store.close()
        return graph, node

    models = {"teacher": teacher}
    if n_untrained > 0:
        models["untrained"] = teacher.random_twin(seed)
    embedding, graph_features = {}, {}
    for name, model in models.items():
        graph, node = features(model)
        embedding[name] = layer_statistics(node, z_stat, ks, widths, n_pairs, seed)
        graph_features[name] = graph
    result: dict[str, Any] = {
        "teacher": teacher.spec, "fingerprint": teacher.fingerprint, "encoder": teacher.describe(),
        "data": source, "layers": ks, "seed": seed, "n_structures": int(len(stat_pos)), "n_structures_total": int(n),
        "n_atoms": int(len(z_stat)), "n_elements": int(len(np.unique(z_stat))), "n_skipped": len(problems),
        "embedding": embedding, "probe": None, "beats_untrained": None,
        "teacher_leaks_target": bool(target is not None and leaks(teacher.training, target)),
    }
    if target is not None:
        result["probe"], result["beats_untrained"] = _probe_rows(
            target, graph_features, y, lab_idx, starts, ks, seed, test_fraction,
            composition_features([numbers[i] for i in lab_idx]),
            lambda s: features(teacher.random_twin(s))[0][lab_idx], n_untrained)
    result["seconds"] = time.perf_counter() - t0
    return result


def _f(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def format_probe(result: dict[str, Any]) -> str:
    """Render a :func:`probe_teacher` result as a readable text table."""
    lines = [f"teacher   {result['teacher']} ({result['fingerprint']})",
             f"data      {result['data']}: {result['n_structures']} structures ({result['n_atoms']} atoms, "
             f"{result['n_elements']} elements) for the embedding statistics"]
    emb = result["embedding"]
    untrained = emb.get("untrained")
    lines.append("")
    lines.append("atom embeddings (L2-normalised per layer)")
    head = f"{'layer':>6}  {'element R²':>11}  {'mean cosine':>11}  {'eff. rank':>9}"
    if untrained:
        head += f"  {'untrained: R²':>13}  {'cosine':>7}  {'eff. rank':>9}"
    lines.append(head)
    for k, row in enumerate(emb["teacher"]):
        line = (f"{row['layer']:>6}  {_f(row['element_r2']):>11}  {_f(row['mean_cosine']):>11}"
                f"  {_f(row['effective_rank'], '.1f'):>9}")
        if untrained:
            u = untrained[k]
            line += f"  {_f(u['element_r2']):>13}  {_f(u['mean_cosine'], '.3f'):>7}  {_f(u['effective_rank'], '.1f'):>9}"
        lines.append(line)
    if isinstance(result.get("encoder"), dict) and "trained_on" in result["encoder"]:  # a teacher plugin
        lines.append("(element R²: share of the variance the element alone explains; the untrained twin is the "
                     "teacher's random twin: the same architecture with its weights redrawn)")
    else:
        lines.append("(element R²: share of the variance the element alone explains, 1 for layer 0 by construction; "
                     "layers ≥ 1 are softplus outputs, all positive, so their cosines are high even untrained: "
                     "compare with the untrained twin)")
    probe = result.get("probe")
    if probe:
        lines.append("")
        lines.append(f"ridge probe of {probe['target']}: {probe['n_fit']} structures to fit, {probe['n_test']} to test "
                     f"(seed {result['seed']}), layers {','.join(map(str, result['layers']))} averaged over atoms")
        lines.append(f"{'features':<28}{'test MAE':>10}{'test R²':>10}{'alpha':>10}")
        names = {"teacher": "teacher", "untrained": f"untrained twin (seed {result['seed']})", "composition": "composition",
                 "mean": "training mean"}
        for key, label in names.items():
            row = probe["rows"].get(key)
            if row is None:
                continue
            lines.append(f"{label:<28}{_f(row['mae']):>10}{_f(row['r2']):>10}{_f(row.get('alpha'), '.3g'):>10}")
        for key, label in (("teacher", "teacher"), ("untrained", "untrained twin")):
            for row in probe["per_layer"].get(key, []):
                lines.append(f"{label + ', layer ' + str(row['layer']):<28}{_f(row['mae']):>10}{_f(row['r2']):>10}"
                             f"{_f(row['alpha'], '.3g'):>10}")
        twins = probe.get("untrained_twins", [])
        if len(twins) > 1:
            maes = np.array([t["mae"] for t in twins])
            lines.append(f"{len(twins)} untrained twins (seeds {twins[0]['seed']}…{twins[-1]['seed']}): test MAE "
                         f"{maes.mean():.4f} ± {maes.std(ddof=1):.4f} (min {maes.min():.4f}, max {maes.max():.4f})")
        if result.get("beats_untrained") is not None:
            what = "its untrained twin" if len(twins) == 1 else f"every one of its {len(twins)} untrained twins"
            verdict = "beats" if result["beats_untrained"] else "does NOT beat"
            lines.append(f"the teacher {verdict} {what} on this probe")
        if result.get("teacher_leaks_target"):
            lines.append(f"warning: {result['teacher']} was trained on {probe['target']} or what gives it away "
                         f"({result['encoder']['trained_on']['dataset']}): the probe measures recall, not transfer")
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)
