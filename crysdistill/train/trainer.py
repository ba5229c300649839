"""The training loop shared by every student, vanilla and distilled alike.

One code path: without a teacher the distillation term is simply absent. The best epoch is
chosen on the validation MAE only; the test split is evaluated once, at the end, with the best
checkpoint. Checkpoints are written atomically every epoch and a run resumes from ``last.pt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from crysdistill.config import to_dict
from crysdistill.data.cache import GraphSet, build_graphs
from crysdistill.data.readers import Dataset, read_dataset
from crysdistill.data.records import Problem
from crysdistill.distill.cache import TeacherEmbeddings, check_records, embed_records
from crysdistill.distill.losses import DistillationLoss
from crysdistill.errors import ConfigError, UserError
from crysdistill.students.base import StudentAdapter
from crysdistill.students.checkpoint import save_student
from crysdistill.students.registry import build_student, get_student
from crysdistill.train.config import TrainConfig
from crysdistill.train.corpus_term import CorpusTerm
from crysdistill.train.pseudo import PseudoLabels
from crysdistill.train.splits import Normalizer, make_splits
from crysdistill.utils import (
    atomic_save,
    atomic_write_text,
    build_progress,
    cosine_schedule,
    resolve_device,
    restore_run,
    seed_everything,
)

log = logging.getLogger("crysdistill.train")

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_property_loss", "train_distill_node", "train_distill_graph",
                 "train_mae", "val_mae", "seconds", "train_pseudo_loss", "train_corpus_loss"]


@dataclass
class Prepared:
    """Data a run needs, built once (and shared by the runs of a weight grid)."""

    graphs: GraphSet
    y: np.ndarray  # (n, T), NaN = missing
    splits: dict[str, np.ndarray]
    normalizer: Normalizer
    teacher: object | None
    embeddings: TeacherEmbeddings | None
    injected: TeacherEmbeddings | None
    problems: list[Problem]
    n_missing_labels: int
    featurizer_fingerprint: str
    pseudo: PseudoLabels | None = None  # the teacher-labelled corpus (TrainConfig.pseudo)
    corpus: CorpusTerm | None = None  # encoder distillation kept on (TrainConfig.corpus)


def _progress(desc: str):
    return build_progress(desc)


def prepare(cfg: TrainConfig, data: str | Dataset, teacher=None) -> Prepared:
    """Read the data, check the targets, build (cached) graphs, split, and embed with the teacher.

    Args:
        cfg: the run's config.
        data: a path (see :func:`read_dataset`) or an already read :class:`Dataset`.
        teacher: ``cfg.teacher`` already loaded (it is loaded here otherwise).
    """
    if not cfg.targets:
        raise ConfigError("no target given; pass --target KEY (see 'crysdistill data inspect' for the labels)")
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=cfg.on_error)
    data = ds.source
    present = ds.label_keys()
    missing_keys = [t for t in cfg.targets if t not in present]
    if missing_keys:
        raise UserError(f"{data}: target {', '.join(map(repr, missing_keys))} not found; labels present: "
                        f"{', '.join(present) if present else 'none'}")
    problems = list(ds.problems)
    records, y_rows, n_missing = [], [], 0
    for r in ds.records:
        row = [r.labels.get(t) for t in cfg.targets]
        if all(v is None for v in row):
            if cfg.missing_labels == "raise":
                raise UserError(f"{r.name}: label {', '.join(cfg.targets)} missing or not a number; fix the record "
                                "or set missing_labels=skip")
            n_missing += 1
            continue
        records.append(r)
        y_rows.append([np.nan if v is None else v for v in row])
    if n_missing:
        log.info("skipped %d record(s) without a numeric %s", n_missing, "/".join(cfg.targets))
    if cfg.distill.inject_layers and not cfg.teacher:
        raise ConfigError("distill.inject_layers needs a teacher (--teacher)")
    student = build_student(cfg.student, cfg.model, n_targets=len(cfg.targets))
    if cfg.distill.inject_layers and not student.accepts_extra_atom_features:
        raise ConfigError(f"student {cfg.student!r} does not accept extra atom features; embedding injection "
                          "(distill.inject_layers) is not available for it")
    graphs = build_graphs(records, student.featurizer(), cache_dir=cfg.cache_dir, workers=cfg.workers,
                          on_error=cfg.on_error, progress=_progress(f"{cfg.student} graphs"))
    problems += graphs.problems
    id_to_row = {r.id: i for i, r in enumerate(records)}
    y = np.asarray([y_rows[id_to_row[i]] for i in graphs.ids], dtype=np.float64).reshape(len(graphs), len(cfg.targets))

    embeddings = injected = None
    if not cfg.teacher:
        teacher = None
    else:
        if teacher is None:
            from crysdistill.teachers.registry import load_teacher

            teacher = load_teacher(cfg.teacher, device=resolve_device(cfg.device))
        by_id = {r.id: r for r in records}
        ok, bad = check_records(teacher, [by_id[i] for i in graphs.ids], on_error=cfg.on_error)
        if bad:  # structures the student can represent but the teacher cannot
            problems += bad
            keep_ids = {r.id for r in ok}
            keep = [k for k, rid in enumerate(graphs.ids) if rid in keep_ids]
            graphs, y = graphs.subset(keep), y[keep]
        aligned = [by_id[i] for i in graphs.ids]
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    splits = make_splits(len(graphs), cfg.train_size, cfg.val_size, cfg.test_size, split_seed)
    if cfg.target_transform == "log":
        bad = np.argwhere(np.isfinite(y) & (y <= 0))
        if len(bad):
            i, t = bad[0]
            raise UserError(f"{graphs.ids[i]}: {cfg.targets[t]} = {y[i, t]:g} is not positive; "
                            f"target_transform=log needs positive labels ({len(bad)} are not): use none, or fix them")
    normalizer = Normalizer.fit(y[splits["train"]], cfg.target_transform)
    if teacher is not None:
        from crysdistill.teachers.base import check_unseen, warn_if_leaks

        check_unseen(teacher, [graphs.ids[i] for i in splits["test"]])
        warn_if_leaks(teacher, cfg.targets, [graphs.ids[i] for k in ("train", "val") for i in splits[k]])
    if teacher is not None:
        # embeddings are looked up by structure key, so they are aligned with the whole graph list
        if cfg.distill.inject_layers:  # inputs of every split, not only training (and nothing outside the splits)
            used = np.concatenate([splits["train"], splits["val"], splits["test"]])
            inj = embed_records(teacher, [aligned[i] for i in used], cfg.distill.inject_layers,
                                cache_dir=cfg.cache_dir, progress=_progress(f"{teacher.spec} embeddings (injection)"),
                                workers=cfg.workers)
            injected = TeacherEmbeddings(inj.store, list(graphs.keys), inj.dim, inj.fingerprint, inj.n_computed)
        if cfg.distill.node_weight or cfg.distill.graph_weight or cfg.distill.weight_grid:
            # only the training structures are distilled
            emb = embed_records(teacher, [aligned[i] for i in splits["train"]], cfg.distill.teacher_layers,
                                cache_dir=cfg.cache_dir, progress=_progress(f"{teacher.spec} embeddings"),
                                workers=cfg.workers)
            embeddings = TeacherEmbeddings(emb.store, list(graphs.keys), emb.dim, emb.fingerprint, emb.n_computed)
    pseudo = None
    if cfg.pseudo.teacher or cfg.pseudo.data:
        from crysdistill.train.pseudo import teacher_labels

        by_id = {r.id: r for r in records}
        pseudo = teacher_labels(cfg, [by_id[i] for i in graphs.ids], splits, y, normalizer, student.featurizer(),
                                device=str(resolve_device(cfg.device)), progress=_progress("teacher-labelled corpus"))
    corpus = None
    if cfg.corpus.weight:
        from crysdistill.train.corpus_term import corpus_term

        by_id = {r.id: r for r in records}
        corpus = corpus_term(cfg, [by_id[i] for i in graphs.ids], splits, student.featurizer(),
                             device=str(resolve_device(cfg.device)), progress=_progress("corpus term"))
    return Prepared(graphs, y, splits, normalizer, teacher, embeddings, injected, problems, n_missing,
                    student.featurizer().fingerprint(), pseudo, corpus)


def _masked_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The property loss over the labels present (NaN = missing): ``mse``, ``l1`` or ``huber`` (δ = 1)."""
    mask = ~torch.isnan(target)
    if not mask.any():
        return pred.sum() * 0.0
    diff = (pred - torch.nan_to_num(target))[mask]
    if kind == "l1":
        return diff.abs().mean()
    if kind == "huber":
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), delta=1.0)
    return (diff ** 2).mean()


def collate_indices(adapter: StudentAdapter, graphs: GraphSet, idx, injected: TeacherEmbeddings | None = None):
    """Collate ``graphs[idx]`` (with injected teacher embeddings as extra atom features, if any)."""
    extra = injected.node_list(idx) if injected is not None else None
    return adapter.collate([graphs[i] for i in idx], extra) if extra is not None else \
        adapter.collate([graphs[i] for i in idx])


def predict_indices(adapter: StudentAdapter, graphs: GraphSet, indices, batch_size: int,
                    device: torch.device, injected: TeacherEmbeddings | None = None) -> np.ndarray:
    """Predictions (normalised units) for ``graphs[indices]``: ``(len(indices), T)``."""
    adapter.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(indices), batch_size):
            idx = indices[s:s + batch_size]
            batch = adapter.to_device(collate_indices(adapter, graphs, idx, injected), device)
            out.append(adapter(batch).prediction.reshape(len(idx), -1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, adapter.n_targets))


def _mae(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over targets of the MAE (NaN targets ignored)."""
    per = [np.nanmean(np.abs(pred[:, t] - y[:, t])) for t in range(y.shape[1]) if np.isfinite(y[:, t]).any()]
    return float(np.mean(per)) if per else float("nan")


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    o = cfg.optim
    total = max(1, cfg.epochs * steps_per_epoch)
    if o.scheduler == "cosine":
        return cosine_schedule(opt, total)
    if o.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total)
    if o.scheduler == "step":
        step = o.step_epoch * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: o.step_gamma if s >= step else 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def fit(cfg: TrainConfig, prep: Prepared, out: Path, resume: bool = False) -> dict:
    """Train one student on prepared data; writes ``best.pt``, ``last.pt``, ``metrics.csv``.

    Returns:
        ``{"val_mae", "best_epoch", "seconds", "seconds_before"}``: ``seconds`` is the training
        time of every epoch, ``seconds_before`` that of the epochs an interrupted run had done
        before this call resumed it.
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    adapter = build_student(cfg.student, cfg.model, n_targets=len(cfg.targets),
                            extra_atom_features=prep.injected.dim if prep.injected is not None else 0)
    init = None
    if cfg.init:
        from crysdistill.distill.corpus import init_from

        init = init_from(adapter, cfg.init)
        d = init["distillation"] or {}
        log.info("initialised %d tensors of %s from %s%s", init["loaded"], cfg.student, init["init"],
                 f" (distilled from {d['teacher']} on {d.get('n_train')} structures)" if d else "")
    adapter = adapter.to(device)
    distill = None
    if prep.embeddings is not None:
        distill = DistillationLoss(adapter.embedding_dim, prep.embeddings.dim, adapter.graph_embedding_dim,
                                   node_weight=cfg.distill.node_weight, graph_weight=cfg.distill.graph_weight,
                                   projection=cfg.distill.projection).to(device)
        if not cfg.distill.node_weight and not cfg.distill.graph_weight:
            distill = None  # weight 0: the vanilla run (the safeguard's first grid point)
    params = list(adapter.parameters()) + (list(distill.parameters()) if distill is not None else [])
    corpus = prep.corpus
    if corpus is not None:  # each step adds a batch of corpus structures the encoder must still match the teacher on
        from crysdistill.distill.corpus import LayerRegression
        from crysdistill.distill.losses import matched_teacher_nodes

        corpus_head = LayerRegression(adapter.embedding_dim, corpus.widths, corpus.head_state["variances"])
        corpus_head.load_state_dict(corpus.head_state)
        corpus_head = corpus_head.to(device)
        params += list(corpus_head.parameters())
        corpus_bs = max(1, int(round(cfg.batch_size * cfg.corpus.ratio)))
    opt_cls = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    train_idx = prep.splits["train"]
    steps = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    sched = _make_scheduler(opt, cfg, steps)
    y_norm = torch.tensor(prep.normalizer.encode(prep.y), dtype=torch.float32)
    pseudo = prep.pseudo
    if pseudo is not None:  # each step adds a batch of teacher-labelled corpus structures
        y_pseudo = torch.tensor(prep.normalizer.encode(pseudo.y), dtype=torch.float32)
        pseudo_bs = max(1, int(round(cfg.batch_size * cfg.pseudo.ratio)))
    teacher_fp_before = prep.teacher.weights_fingerprint() if prep.teacher is not None else None

    start_epoch, best_val, best_epoch, elapsed = 0, float("inf"), -1, 0.0
    before = 0.0
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.csv"
    if resume and last_path.exists():
        state = restore_run(last_path, to_dict(cfg), {"state_dict": adapter,
                                                      **({"distill_state": distill} if distill is not None else {}),
                                                      **({"corpus_head": corpus_head} if corpus is not None else {})},
                            opt, sched)
        start_epoch, best_val, best_epoch, elapsed = (state["epoch"] + 1, state["best_val"], state["best_epoch"],
                                                      state["seconds"])
        before = elapsed
        log.info("resuming %s at epoch %d (best val MAE %.4g at epoch %d)", out, start_epoch + 1, best_val, best_epoch)
    elif metrics_path.exists():
        metrics_path.unlink()
    if not metrics_path.exists():
        with open(metrics_path, "w", newline="") as fh:
            csv.writer(fh).writerow(METRIC_FIELDS)

    use_bar = sys.stderr.isatty()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        adapter.train()
        if distill is not None:
            distill.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        sums = {"loss": 0.0, "prop": 0.0, "node": 0.0, "graph": 0.0, "pseudo": 0.0, "corpus": 0.0}
        if pseudo is not None:  # a fresh order of the corpus each epoch, cycled if the epoch needs more
            n_need = steps * pseudo_bs
            p_order = torch.cat([torch.randperm(len(pseudo.graphs), generator=gen)
                                 for _ in range(math.ceil(n_need / len(pseudo.graphs)))]).numpy()
        if corpus is not None:
            corpus_head.train()
            c_order = torch.cat([torch.randperm(len(corpus.graphs), generator=gen)
                                 for _ in range(math.ceil(steps * corpus_bs / len(corpus.graphs)))]).numpy()
        train_pred, train_true = [], []
        bar = None
        if use_bar:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size].tolist()
            batch = adapter.to_device(collate_indices(adapter, prep.graphs, idx, prep.injected), device)
            target = y_norm[idx].to(device)
            o = adapter(batch)
            pred = o.prediction.reshape(len(idx), -1)
            prop = _masked_loss(pred, target, cfg.loss)
            loss = prop
            if distill is not None:
                dl, parts = distill(o, prep.embeddings.targets(idx).to(device))
                loss = loss + dl
                sums["node"] += parts.get("node", 0.0) * len(idx)
                sums["graph"] += parts.get("graph", 0.0) * len(idx)
            if pseudo is not None:
                k = s // cfg.batch_size * pseudo_bs
                pidx = p_order[k:k + pseudo_bs].tolist()
                pbatch = adapter.to_device(adapter.collate([pseudo.graphs[i] for i in pidx]), device)
                pl = _masked_loss(adapter(pbatch).prediction.reshape(len(pidx), -1), y_pseudo[pidx].to(device),
                                  cfg.loss)
                loss = loss + cfg.pseudo.weight * pl
                sums["pseudo"] += pl.item() * len(idx)
            if corpus is not None:
                k = s // cfg.batch_size * corpus_bs
                cidx = c_order[k:k + corpus_bs].tolist()
                co = adapter(adapter.to_device(adapter.collate([corpus.graphs[i] for i in cidx]), device))
                cl = corpus_head(co.node_embedding,
                                 matched_teacher_nodes(co, corpus.embeddings.targets(cidx).to(device))).mean()
                loss = loss + cfg.corpus.weight * cl
                sums["corpus"] += cl.item() * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            if not torch.isfinite(loss):
                raise UserError(f"training diverged at epoch {epoch + 1} (loss {float(loss)}); lower optim.lr")
            sums["loss"] += loss.item() * len(idx)
            sums["prop"] += prop.item() * len(idx)
            train_pred.append(prep.normalizer.decode(pred.detach().cpu().double().numpy()))
            train_true.append(prep.y[idx])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}")
        if bar is not None:
            bar.close()
        n = len(order)
        val_pred = predict_indices(adapter, prep.graphs, prep.splits["val"].tolist(), cfg.eval_batch_size, device,
                                   prep.injected)
        val_mae = _mae(prep.normalizer.decode(val_pred), prep.y[prep.splits["val"]])
        train_mae = _mae(np.concatenate(train_pred), np.concatenate(train_true))
        elapsed += time.perf_counter() - t0
        improved = val_mae < best_val
        if improved:
            best_val, best_epoch = val_mae, epoch + 1
            save_student(adapter, best_path, **_run_extras(cfg, prep, epoch + 1, val_mae),
                         init_distillation=(init or {}).get("distillation"))
        row = [epoch + 1, opt.param_groups[0]["lr"], sums["loss"] / n, sums["prop"] / n, sums["node"] / n,
               sums["graph"] / n, train_mae, val_mae, round(time.perf_counter() - t0, 3), sums["pseudo"] / n,
               sums["corpus"] / n]
        with open(metrics_path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)
        atomic_save({
            "kind": "crysdistill-train-state", "config": to_dict(cfg), "epoch": epoch,
            "state_dict": adapter.state_dict(),
            "distill_state": distill.state_dict() if distill is not None else {},
            "corpus_head": corpus_head.state_dict() if corpus is not None else {},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_val": best_val,
            "best_epoch": best_epoch, "seconds": elapsed, "torch_rng": torch.get_rng_state(),
        }, last_path)
        log.info("epoch %d/%d  loss %.4f  train MAE %.4g  val MAE %.4g%s  %.1f s", epoch + 1, cfg.epochs,
                 sums["loss"] / n, train_mae, val_mae, "  *" if improved else "", row[8])
    if prep.teacher is not None:
        if prep.teacher.weights_fingerprint() != teacher_fp_before:  # the teacher is frozen; this would be a bug
            raise RuntimeError("the teacher's weights or buffers changed during training")
    return {"val_mae": best_val, "best_epoch": best_epoch, "seconds": elapsed, "seconds_before": before}


def _run_extras(cfg: TrainConfig, prep: Prepared, epoch: int, val_mae: float) -> dict:
    return {
        "targets": list(cfg.targets),
        "normalizer": prep.normalizer.to_dict(),
        "epoch": epoch,
        "val_mae": val_mae,
        "teacher_fingerprint": prep.teacher.fingerprint if prep.teacher is not None else None,
        "featurizer_fingerprint": prep.featurizer_fingerprint,
        "inject": ({"teacher": str(cfg.teacher), "teacher_fingerprint": prep.teacher.fingerprint,
                    "teacher_plugin": prep.teacher.name, "layers": list(cfg.distill.inject_layers)}
                   if prep.injected is not None else None),
        "teacher": prep.teacher.describe() if prep.teacher is not None else None,
        "init": cfg.init,
        "pseudo": prep.pseudo.info if prep.pseudo is not None else None,
        "corpus": prep.corpus.info if prep.corpus is not None else None,
        "train_config": to_dict(cfg),
    }


def train_student(cfg: TrainConfig, data: str | Dataset, out: str | Path, resume: bool = False) -> dict:
    """Train, select on validation, test once; write the run folder and return ``summary.json``'s content.

    The run folder holds ``config.yaml``, ``splits.json``, ``metrics.csv``, ``best.pt``, ``last.pt``,
    ``predictions_test.csv`` and ``summary.json``. With ``distill.weight_grid`` set and a teacher
    given, one sub-run per weight goes to ``grid/w=<weight>/`` and the best on validation is kept;
    with ``distill.inject_layers`` too, a plain run without the teacher (``grid/vanilla/``) is one
    of the candidates.
    """
    out = Path(out)
    if resume and not (out / "last.pt").exists() and not (out / "grid").exists():
        raise UserError(f"{out}: nothing to resume (no last.pt); start without --resume")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    get_student(cfg.student)  # an unknown name fails before any data is read
    if cfg.init:
        from crysdistill.distill.corpus import resolve_init

        resolve_init(cfg.init)  # so does a missing --init
    t_start = time.perf_counter()
    prep = prepare(cfg, data)
    data = data.source if isinstance(data, Dataset) else data
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), out / "config.yaml")
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    atomic_write_text(json.dumps({
        "seed": cfg.seed, "split_seed": split_seed, "data": str(data),
        **{k: [prep.graphs.ids[i] for i in v] for k, v in prep.splits.items()},
    }), out / "splits.json")

    grid = list(cfg.distill.weight_grid) if prep.embeddings is not None else []
    chosen_weight = None
    if grid:
        # candidates: (name, node weight, config, prepared data). With injection on, every weight
        # runs with the teacher's embeddings as input, so the plain student (no teacher at all) is
        # a candidate too: the safeguard must be able to fall back to vanilla.
        candidates = [(f"{w:g}", float(w), replace(cfg, distill=replace(cfg.distill, node_weight=float(w), weight_grid=[])),
                       prep) for w in grid]
        if prep.injected is not None:
            plain = replace(cfg.distill, node_weight=0.0, graph_weight=0.0, inject_layers=[], weight_grid=[])
            candidates.insert(0, ("vanilla", 0.0, replace(cfg, distill=plain), replace(prep, injected=None)))
        results = {}
        for name, _, sub_cfg, sub_prep in candidates:
            sub = out / "grid" / (name if name == "vanilla" else f"w={name}")
            sub.mkdir(parents=True, exist_ok=True)
            what = f"distillation weight {name}"
            if name == "vanilla":
                what = "vanilla (no teacher)"
            elif sub_prep.injected is not None:
                what = f"the teacher's layers {','.join(map(str, cfg.distill.inject_layers))} as input, {what}"
            log.info("safeguard: %s", what)
            results[name] = fit(sub_cfg, sub_prep, sub, resume=resume and (sub / "last.pt").exists())
            results[name]["dir"] = sub
        name, chosen_weight, _, prep = min(candidates, key=lambda c: (results[c[0]]["val_mae"], c[1], c[0] != "vanilla"))
        for file in ("best.pt", "last.pt", "metrics.csv"):
            shutil.copyfile(results[name]["dir"] / file, out / file)
        fitres = results[name]
        fitres["seconds"] = sum(r["seconds"] for r in results.values())
        fitres["seconds_before"] = sum(r["seconds_before"] for r in results.values())
        grid_summary = {k: r["val_mae"] for k, r in results.items()}
    else:
        fitres = fit(cfg, prep, out, resume=resume)
        grid_summary = None

    # the test split, once, with the model selected on validation
    from crysdistill.students.checkpoint import load_student
    from crysdistill.teachers.base import leaks_into

    device = resolve_device(cfg.device)
    fit_ids = [prep.graphs.ids[i] for k in ("train", "val") for i in prep.splits[k]]
    best, ckpt = load_student(out / "best.pt")
    best.to(device)
    test_idx = prep.splits["test"].tolist()
    summary = {
        "student": cfg.student, "targets": list(cfg.targets), "data": str(data),
        "teacher": cfg.teacher, "teacher_fingerprint": prep.teacher.fingerprint if prep.teacher is not None else None,
        "teacher_trained_on": prep.teacher.training.to_dict() if prep.teacher is not None else None,
        "teacher_leaks_target": (any(leaks_into(prep.teacher, t, fit_ids) for t in cfg.targets)
                                 if prep.teacher is not None else None),
        "distill_weight": (chosen_weight if chosen_weight is not None else
                           (cfg.distill.node_weight if prep.teacher is not None else 0.0)),
        "weight_grid_val_mae": grid_summary,
        "inject_layers": list(cfg.distill.inject_layers) if prep.injected is not None else [],
        "init": cfg.init, "init_distillation": ckpt.get("init_distillation"),
        "pseudo": prep.pseudo.info if prep.pseudo is not None else None,
        "corpus": prep.corpus.info if prep.corpus is not None else None,
        "seed": cfg.seed, "split_seed": split_seed, "n_train": len(prep.splits["train"]), "n_val": len(prep.splits["val"]),
        "n_test": len(test_idx), "n_skipped": len(prep.problems), "n_missing_labels": prep.n_missing_labels,
        "val_mae": fitres["val_mae"], "best_epoch": fitres["best_epoch"], "epochs": cfg.epochs,
        "test_mae": None, "test_mae_per_target": None,
    }
    if test_idx:
        pred = predict_indices(best, prep.graphs, test_idx, cfg.eval_batch_size, device, prep.injected)
        pred = prep.normalizer.decode(pred)
        true = prep.y[test_idx]
        summary["test_mae"] = _mae(pred, true)
        summary["test_mae_per_target"] = {t: float(np.nanmean(np.abs(pred[:, k] - true[:, k])))
                                          for k, t in enumerate(cfg.targets)}
        with open(out / "predictions_test.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id"] + [f"{t}_{s}" for t in cfg.targets for s in ("target", "prediction")])
            for k, i in enumerate(test_idx):
                w.writerow([prep.graphs.ids[i]] + [v for t in range(len(cfg.targets))
                                                   for v in (true[k, t], pred[k, t])])
    summary["train_seconds"] = fitres["seconds"]
    # wall time of the run: this call's, plus the epochs an interrupted run did before it resumed
    summary["seconds"] = time.perf_counter() - t_start + fitres["seconds_before"]
    atomic_write_text(json.dumps(summary, indent=1), out / "summary.json")
    del ckpt
    return summary
