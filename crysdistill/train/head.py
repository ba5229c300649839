"""The teacher + head reference: a small MLP on a frozen teacher's per-structure embeddings.

Each structure is described by the mean over its atoms of the teacher's L2-normalised atom
embeddings of the chosen layers (default: all), concatenated, then standardised on the training
split (AtomSets, HackNIP and MatterVial do the same with foundation embeddings). Two heads are
fitted on the training split and chosen on the validation split only:

* an MLP (two hidden layers, SiLU, dropout; Adam on the squared error of the z-normalised target,
  full batch, early stopping on the validation MAE), over a small grid of widths and weight decays;
* ridge regression over a grid of penalties (the linear reference).

The head with the lower validation MAE is tested once. Splits are those of ``crysdistill train``
with the same sizes and seed (the same structures, in the same order, are kept and split), so the
reference lines up with every student trained on those settings.

With ``features="composition"`` the same heads run on composition features (no teacher), the
floor any teacher has to beat.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from crysdistill.errors import UserError

log = logging.getLogger("crysdistill")

#: (hidden width, weight decay) pairs tried for the MLP.
MLP_GRID: tuple[tuple[int, float], ...] = ((256, 1e-4), (256, 1e-2), (512, 1e-3))
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 4, 15))
#: ``kind`` of a ``head.pt`` file
HEAD_KIND = "crysdistill-head"


@dataclass
class HeadResult:
    """What ``crysdistill head`` reports (``summary.json`` of ``--out``)."""

    teacher: str | None
    teacher_fingerprint: str | None
    features: str
    layers: list[int]
    target: str
    dim: int
    n_train: int
    n_val: int
    n_test: int
    seed: int
    chosen: str
    val_mae: float
    test_mae: float
    mean_test_mae: float
    candidates: dict[str, float] = field(default_factory=dict)
    teacher_trained_on: dict | None = None
    teacher_leaks_target: bool | None = None
    seconds: float = 0.0
    embed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: architecture of the head's MLPs (two hidden layers, dropout); ``crysdistill finetune`` starts from them too
MLP_DEPTH, MLP_DROPOUT = 2, 0.1


def mlp(dim: int, hidden: int, n_out: int, depth: int = MLP_DEPTH, dropout: float = MLP_DROPOUT) -> torch.nn.Module:
    """``depth`` hidden layers of ``hidden`` units (SiLU, then dropout where ``dropout`` > 0), then a linear output."""
    mods: list[torch.nn.Module] = []
    width = dim
    for _ in range(depth):
        mods += [torch.nn.Linear(width, hidden), torch.nn.SiLU()] + ([torch.nn.Dropout(dropout)] if dropout else [])
        width = hidden
    return torch.nn.Sequential(*mods, torch.nn.Linear(width, n_out))


def fit_mlp(x: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, val_idx: np.ndarray, hidden: int, weight_decay: float,
            seed: int = 0, max_epochs: int = 2000, patience: int = 100, lr: float = 1e-3
            ) -> tuple[torch.nn.Module, float]:
    """Full-batch Adam on the squared error of ``y`` (already z-normalised), early stopping on validation MAE.

    Returns:
        The model at its best validation epoch, and that MAE (in normalised units).
    """
    torch.manual_seed(seed)
    model = mlp(x.shape[1], hidden, y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    xf, yf = torch.tensor(x[fit_idx], dtype=torch.float32), torch.tensor(y[fit_idx], dtype=torch.float32)
    xv, yv = torch.tensor(x[val_idx], dtype=torch.float32), torch.tensor(y[val_idx], dtype=torch.float32)
    best, best_state, since = float("inf"), None, 0
    for _ in range(max_epochs):
        model.train()
        loss = ((model(xf) - yf) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            v = float((model(xv) - yv).abs().mean())
        if v < best - 1e-6:
            best, since = v, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, best


def fit_ridge(x: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge regression (with intercept) with the penalty chosen on validation MAE.

    Returns:
        ``(W, val_mae)``: weights ``(F + 1, T)`` (the last row is the intercept) and the validation MAE.
    """
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a, b = xa[fit_idx], y[fit_idx]
    gram, rhs = a.T @ a, a.T @ b
    best = (None, float("inf"))
    eye = np.eye(gram.shape[0])
    eye[-1, -1] = 0.0  # the intercept is not penalised
    for alpha in RIDGE_ALPHAS:
        w = np.linalg.solve(gram + alpha * len(fit_idx) * eye + 1e-9 * np.eye(len(eye)), rhs)
        v = float(np.abs(xa[val_idx] @ w - y[val_idx]).mean())
        if v < best[1]:
            best = (w, v)
    return best


def _val_mae(model, xs, va, y, norm) -> float:
    """Validation MAE in the user's units (after the inverse target transform)."""
    with torch.no_grad():
        z = model(torch.tensor(xs[va], dtype=torch.float32)).numpy().astype(np.float64)
    return float(np.nanmean(np.abs(norm.decode(z) - y[va])))


def fit_head(x: np.ndarray, y: np.ndarray, norm, splits: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Fit the MLP grid and ridge on ``splits["train"]``, choose on ``splits["val"]``, predict ``splits["test"]``.

    Args:
        x: ``(B, F)`` per-structure features (standardised here on the training rows).
        y: ``(B, T)`` targets in the user's units (rows outside the splits are ignored).
        norm: the :class:`~crysdistill.train.trainer.Normalizer` of the targets (transform included).
        splits: ``train``, ``val`` and ``test`` row indices.
        seed: seed of the MLPs.

    Returns:
        ``chosen`` (name), ``candidates`` (validation MAE of each, user units), ``head`` (the
        chosen model: an MLP module or the ridge weights), ``mean``/``std`` (the standardisation)
        and ``pred`` (``(len(test), T)`` test predictions in the user's units).
    """
    tr, va, te = splits["train"], splits["val"], splits["test"]
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)  # a feature constant on the training split (an absent element) stays as is
    xs = (x - mu) / sd
    yz = norm.encode(y)
    cands: dict[str, float] = {}
    models: dict[str, Any] = {}
    for hidden, wd in MLP_GRID:
        model, _ = fit_mlp(xs, yz, tr, va, hidden, wd, seed=seed)
        name = f"mlp(h={hidden},wd={wd:g})"
        cands[name] = _val_mae(model, xs, va, y, norm)
        models[name] = model
    w, _ = fit_ridge(xs, yz, tr, va)
    cands["ridge"] = float(np.nanmean(np.abs(norm.decode(np.concatenate([xs[va], np.ones((len(va), 1))], axis=1) @ w)
                                             - y[va])))
    models["ridge"] = w
    chosen = min(cands, key=cands.get)
    head = models[chosen]
    return {"chosen": chosen, "candidates": cands, "head": head, "mean": mu, "std": sd,
            "pred": norm.decode(apply_head(head, mu, sd, x[te]))}


def apply_head(head, mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A fitted head (MLP module or ridge weights) on raw features ``x``: normalised predictions ``(B, T)``."""
    xs = (x - mean) / std
    if isinstance(head, np.ndarray):
        return np.concatenate([xs, np.ones((len(xs), 1))], axis=1) @ head
    with torch.no_grad():
        return head(torch.tensor(xs, dtype=torch.float32)).numpy().astype(np.float64)



def structure_features(teacher, records, layers, cache_dir=None, progress=None, workers: int = 1) -> np.ndarray:
    """Per-structure means of the teacher's L2-normalised atom embeddings of ``layers``: ``(B, D)``."""
    from crysdistill.distill.cache import embed_records

    emb = embed_records(teacher, records, layers, cache_dir=cache_dir, progress=progress, workers=workers)
    x = np.stack([np.asarray(emb.store.get(k)["graph"], dtype=np.float64) for k in emb.keys])
    emb.store.close()
    return x


def run_head(cfg, data, features: str = "teacher", layers: list[int] | None = None, output: str | None = None,
             out_dir: str | os.PathLike | None = None) -> HeadResult:
    """Fit the teacher + head reference on the splits ``crysdistill train`` would make with ``cfg``.

    Args:
        cfg: a :class:`~crysdistill.train.config.TrainConfig` (target, teacher, sizes, seed,
            split seed, student for the split's structure filter, on_error, cache).
        data: a dataset path or :class:`~crysdistill.data.readers.Dataset`.
        features: ``"teacher"`` or ``"composition"``.
        layers: teacher layers (default: every layer).
        output: write ``id, target, prediction`` of the test split here (CSV).
        out_dir: write ``summary.json`` and ``head.pt`` (the fitted head, its standardisation and
            normaliser, the teacher's spec and fingerprint) here.

    Raises:
        UserError: no target, no teacher for teacher features, too few structures for the splits.
    """
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.teacher.probe import composition_features
    from crysdistill.teachers.base import leaks_into
    from crysdistill.train.trainer import prepare

    t0 = time.perf_counter()
    if len(cfg.targets) != 1:
        raise UserError("the head reference predicts one target; pass one --target")
    if features == "teacher" and not cfg.teacher:
        raise UserError("teacher features need --teacher (or use --features composition)")
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=cfg.on_error)
    plain = replace(cfg, distill=replace(cfg.distill, node_weight=0.0, graph_weight=0.0, weight_grid=[], inject_layers=[]))
    prep = prepare(plain, ds)  # the same structures, split the same way, as `train` with these settings
    by_id = {r.id: r for r in ds.records}
    records = [by_id[i] for i in prep.graphs.ids]
    splits = prep.splits
    used = np.concatenate([splits["train"], splits["val"], splits["test"]])
    t_emb = time.perf_counter()
    teacher = prep.teacher
    if features == "teacher":
        ks = list(range(teacher.n_layers + 1)) if layers is None else list(layers)
        x_used = structure_features(teacher, [records[i] for i in used], ks, cache_dir=cfg.cache_dir,
                                    workers=cfg.workers)
    elif features == "composition":
        ks = []
        x_used = composition_features([np.asarray(records[i].structure.atomic_numbers) for i in used])
    else:
        raise UserError(f"unknown features {features!r}; use teacher or composition")
    embed_seconds = time.perf_counter() - t_emb
    x = np.zeros((len(records), x_used.shape[1]))
    x[used] = x_used
    tr, va, te = splits["train"], splits["val"], splits["test"]
    norm = prep.normalizer
    fitted = fit_head(x, prep.y, norm, splits, seed=cfg.seed)
    chosen, cands, head, mu, sd, pred = (fitted["chosen"], fitted["candidates"], fitted["head"], fitted["mean"],
                                          fitted["std"], fitted["pred"])
    true = prep.y[te]
    test_mae = float(np.nanmean(np.abs(pred - true))) if len(te) else float("nan")
    mean_mae = float(np.nanmean(np.abs(true - np.nanmean(prep.y[tr])))) if len(te) else float("nan")
    if output:
        with open(output, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["id", "target", "prediction"])
            for k, i in enumerate(te):
                wr.writerow([prep.graphs.ids[i], repr(float(true[k, 0])), repr(float(pred[k, 0]))])
    res = HeadResult(
        teacher=teacher.spec if teacher is not None and features == "teacher" else None,
        teacher_fingerprint=teacher.fingerprint if teacher is not None and features == "teacher" else None,
        features=features, layers=ks, target=cfg.targets[0], dim=int(x.shape[1]), n_train=len(tr), n_val=len(va),
        n_test=len(te), seed=cfg.seed, chosen=chosen, val_mae=cands[chosen], test_mae=test_mae, mean_test_mae=mean_mae,
        candidates=cands,
        teacher_trained_on=teacher.training.to_dict() if teacher is not None and features == "teacher" else None,
        teacher_leaks_target=(leaks_into(teacher, cfg.targets[0], [records[i].id for i in np.concatenate([tr, va])])
                              if teacher is not None and features == "teacher" else None),
        seconds=time.perf_counter() - t0, embed_seconds=embed_seconds)
    if out_dir is not None:
        import json
        from pathlib import Path

        from crysdistill.utils import atomic_save, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = ({"ridge": torch.tensor(head)} if chosen == "ridge" else
                 {k: v.detach().clone() for k, v in head.state_dict().items()})
        atomic_save({"kind": HEAD_KIND, "format": 1, "chosen": chosen, "state": state,
                     "feature_mean": torch.tensor(mu), "feature_std": torch.tensor(sd), "layers": ks,
                     "features": features, "targets": list(cfg.targets), "normalizer": norm.to_dict(),
                     "teacher": res.teacher, "teacher_fingerprint": res.teacher_fingerprint,
                     "teacher_trained_on": res.teacher_trained_on}, out / "head.pt")
        atomic_write_text(json.dumps(res.to_dict(), indent=1), out / "summary.json")
    return res


def format_head(res: HeadResult) -> str:
    what = f"{res.teacher} layers {','.join(map(str, res.layers))}" if res.features == "teacher" else "composition"
    lines = [f"{what} + head on {res.target}: test MAE {res.test_mae:.4g} (predicting the training mean: "
             f"{res.mean_test_mae:.4g})  [{res.chosen} chosen on validation, val MAE {res.val_mae:.4g}; n_train "
             f"{res.n_train}, n_val {res.n_val}, n_test {res.n_test}; {res.dim} features; {res.seconds:.0f} s]"]
    lines.append("  validation MAE: " + ", ".join(f"{k} {v:.4g}" for k, v in res.candidates.items()))
    if res.teacher_leaks_target:
        lines.append(f"  warning: {res.teacher} was trained on {res.target} or what gives it away "
                     f"({res.teacher_trained_on['dataset']})")
    return "\n".join(lines)


def predict_head(path: str | os.PathLike, data, output: str | os.PathLike, on_error: str = "raise",
                 cache_dir: str | os.PathLike | None = None, workers: int = 1, device: str = "auto",
                 limit: int | None = None) -> dict:
    """Predict with a ``head.pt`` of :func:`run_head` (``crysdistill predict --checkpoint DIR/head.pt``).

    The teacher named in the file is loaded (it must have the recorded fingerprint), embeds the
    structures (cached) and the head maps their per-structure features to the target, in the
    user's units. Structures the teacher cannot embed stop the run with one line, or are skipped
    with ``on_error="skip"``.

    Returns:
        ``{"n_predicted", "n_skipped", "problems", "mae"}`` as :func:`crysdistill.train.predict.predict`.
    """
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.distill.cache import check_records
    from crysdistill.errors import CheckpointError
    from crysdistill.teacher.probe import composition_features
    from crysdistill.train.predict import write_predictions
    from crysdistill.train.splits import Normalizer
    from crysdistill.utils import load_checkpoint, resolve_device

    h = load_checkpoint(path)
    if h.get("kind") != HEAD_KIND:
        raise CheckpointError(f"{path}: is a {h.get('kind')!r} checkpoint, not a head (crysdistill head --out)")
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=on_error, limit=limit)
    records, problems = list(ds.records), list(ds.problems)
    if h["features"] == "teacher":
        from crysdistill.teachers.registry import load_teacher

        teacher = load_teacher(h["teacher"], device=resolve_device(device))
        if teacher.fingerprint != h["teacher_fingerprint"]:
            raise CheckpointError(f"{path}: was fitted on teacher {h['teacher_fingerprint']}, but {h['teacher']} is now "
                                  f"teacher {teacher.fingerprint} ({teacher.package} {teacher.package_version()}); "
                                  "restore that teacher or fit the head again")
        records, bad = check_records(teacher, records, on_error=on_error)
        problems += bad
        x = structure_features(teacher, records, h["layers"], cache_dir=cache_dir, workers=workers)
    else:
        x = composition_features([np.asarray(r.structure.atomic_numbers) for r in records])
    if h["chosen"] == "ridge":
        head = h["state"]["ridge"].numpy()
    else:
        hidden, dim = h["state"]["0.weight"].shape
        head = mlp(dim, hidden, len(h["targets"]))
        head.load_state_dict(h["state"])
        head.eval()
    pred = Normalizer.from_dict(h["normalizer"]).decode(apply_head(head, h["feature_mean"].numpy(),
                                                                   h["feature_std"].numpy(), x))
    mae = write_predictions(output, [r.id for r in records], list(h["targets"]), pred,
                            {r.id: r.labels for r in records})
    return {"n_predicted": len(records), "n_skipped": len(problems), "problems": problems, "mae": mae}
