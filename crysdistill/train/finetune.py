"""Fine-tuning a teacher end to end on labels: the accuracy ceiling, and a better teacher to distil.

``crysdistill finetune --teacher chgnet --data … --target … --out DIR`` trains the teacher's own
network (its graph builder and every block, as its plugin's
:meth:`~crysdistill.teachers.base.TeacherAdapter.forward` runs it) with a new property head on the
per-structure mean of its layers' atom embeddings (all layers by default, as ``crysdistill head``
reads them; ``pool=last`` for the last one only), as MatterTune and the foundation-model papers
fine-tune (AdamW, a smaller learning rate for the backbone than for the head).

The head is first fitted on the frozen teacher (a *linear probe* stage; LP-FT, Kumar et al., ICLR
2022): fine-tuning then starts from a head that already fits, so the first gradients do not distort
the pretrained features, and that frozen-teacher head is itself the epoch-0 candidate of the
selection on validation. The probe's candidates are a one-hidden-layer head trained with the
fine-tuning loss (``probe_steps``) and the MLPs of ``crysdistill head`` (``probe_grid``); the best
on validation is kept, so the fine-tuned teacher is never worse on validation than the frozen
teacher + head. Measured here (docs/teachers.md), a fresh head fine-tuned end to end on 250 labels
fell behind the frozen teacher + head, and neither probe candidate is best on every target.

Splits, seeds, selection on validation and the single test are those of ``crysdistill train``
with the same sizes and seeds (the same structures, in the same order, split the same way), so a
fine-tuned teacher lines up with every student trained on those settings. ``metrics.csv``,
``last.pt`` (atomic, every epoch; ``--resume``), ``summary.json`` and ``predictions_test.csv``
are written as for ``train``. The selected weights go to ``DIR/teacher.pt``: a teacher again
(``--teacher DIR/teacher.pt``, frozen: embeddings, injection, heads, labelling a corpus) and a
predictor (``crysdistill predict --checkpoint DIR/teacher.pt``). It records the base teacher, the
labels it was fine-tuned on and the split, so every later use names them as leaked.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from crysdistill.errors import ConfigError, UserError

log = logging.getLogger("crysdistill.train")

#: ``kind`` of the fine-tuned teacher file (also read by the ``finetuned`` teacher plugin)
FINETUNED_KIND = "crysdistill-finetuned-teacher"
FIELDS = ["epoch", "lr_backbone", "lr_head", "train_loss", "train_mae", "val_mae", "seconds"]
FORMAT = 3  # 1: head on the last layer's mean, no linear-probe stage; 2: one hidden layer; 3: head_depth, head_dropout


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (``config.yaml`` of the run folder).

    Attributes:
        teacher: a teacher plugin that can be fine-tuned (``chgnet``, ``sevennet``, a variant).
        targets: label keys to predict.
        train_size, val_size, test_size: split sizes, as ``crysdistill train``.
        seed: seed of the head's initialisation and the batch order (and of the split, unless
            ``split_seed``).
        split_seed: seed of the split (default: ``seed``).
        epochs: passes over the training split.
        batch_size: structures per step.
        lr_backbone: AdamW learning rate of the teacher's weights (cosine decay to 1 %).
        lr_head: AdamW learning rate of the new head.
        weight_decay: AdamW weight decay.
        freeze_layers: keep the first N layers' blocks frozen (0 = train every block).
        head_hidden: width of the hidden layer of a fresh head and of the ``probe_steps`` candidate
            (a candidate of ``probe_grid`` keeps its own width, depth and dropout).
        pool: ``all`` (default): the head reads the per-structure mean of every layer, concatenated
            and standardised on the training split; ``last``: of the last layer only.
        probe_steps: full-batch steps fitting the head on the frozen teacher before fine-tuning
            (the linear-probe stage, selected on validation, recorded as epoch 0; 0 = start the
            fine-tuning from a fresh head).
        probe_grid: also fit the MLPs of ``crysdistill head`` (two hidden layers, dropout, squared
            error, early stopping) on the frozen features; the probe keeps whichever candidate is
            best on validation.
        loss: ``l1`` (default: robust to a few extreme labels), ``mse`` or ``huber``.
        target_transform: ``none`` or ``log`` (positive targets; predictions in the user's units).
        student: whose structure filter makes the split (``cgcnn``: the same structures as ``train``).
        on_error, cache_dir, workers, device, threads: as ``crysdistill train``.
    """

    teacher: str = "chgnet"
    targets: list[str] | None = None
    train_size: float | None = None
    val_size: float | None = None
    test_size: float | None = None
    seed: int = 0
    split_seed: int | None = None
    epochs: int = 30
    batch_size: int = 16
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.0
    freeze_layers: int = 0
    head_hidden: int = 128
    pool: Literal["all", "last"] = "all"
    probe_steps: int = 300
    probe_grid: bool = True
    loss: Literal["l1", "mse", "huber"] = "l1"
    target_transform: Literal["none", "log"] = "none"
    student: str = "cgcnn"
    on_error: Literal["raise", "skip"] = "raise"
    cache_dir: str | None = None
    workers: int = 2
    device: str = "auto"
    threads: int = 0


def _pool(out, layers: list[int]) -> torch.Tensor:
    """Per-structure mean of the atom embeddings of ``layers``, concatenated: ``(B, ΣD)``."""
    ptr = out.ptr.to(out.layers[layers[0]].device)
    counts = ptr[1:] - ptr[:-1]
    seg = torch.repeat_interleave(torch.arange(len(ptr) - 1, device=ptr.device), counts)
    means = []
    for k in layers:
        x = out.layers[k]
        sums = torch.zeros(len(ptr) - 1, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, seg, x)
        means.append(sums / counts.unsqueeze(1).to(x.dtype))
    return torch.cat(means, dim=1)


class FinetuneHead(torch.nn.Module):
    """The property head of a fine-tuned teacher: pooled layers → standardised → an MLP
    (``depth`` hidden layers of ``hidden`` units, SiLU, dropout where ``dropout`` > 0)."""

    def __init__(self, layers: list[int], dim: int, hidden: int, n_out: int, depth: int = 1,
                 dropout: float = 0.0) -> None:
        from crysdistill.train.head import mlp

        super().__init__()
        self.layers = [int(k) for k in layers]
        self.arch = {"head_hidden": int(hidden), "head_depth": int(depth), "head_dropout": float(dropout)}
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.mlp = mlp(dim, hidden, n_out, depth=depth, dropout=dropout)

    def features(self, out) -> torch.Tensor:
        """The pooled layers of a teacher output, before standardisation."""
        return _pool(out, self.layers)

    def forward(self, out) -> torch.Tensor:
        return self.from_features(self.features(out))

    def from_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.std)


def head_layers(teacher, pool: str) -> list[int]:
    return list(range(len(teacher.layer_widths))) if pool == "all" else [len(teacher.layer_widths) - 1]


def load_head(ckpt: dict, teacher) -> FinetuneHead:
    """The head stored in a fine-tuned teacher file (both formats)."""
    n_out = len(ckpt["targets"])
    if ckpt.get("format", 1) == 1:  # the last layer's mean, no standardisation
        last = len(teacher.layer_widths) - 1
        head = FinetuneHead([last], int(teacher.layer_widths[last]), ckpt["head_hidden"], n_out)
        head.load_state_dict({**{f"mlp.{k}": v for k, v in ckpt["head"].items()}, "mean": head.mean,
                              "std": head.std})
        return head
    layers = [int(k) for k in ckpt["head_layers"]]
    head = FinetuneHead(layers, sum(int(teacher.layer_widths[k]) for k in layers), ckpt["head_hidden"], n_out,
                        depth=int(ckpt.get("head_depth", 1)), dropout=float(ckpt.get("head_dropout", 0.0)))
    head.load_state_dict(ckpt["head"])
    head.eval()
    return head


def predict_inputs(teacher, head: FinetuneHead, inputs: list, batch_size: int, features: bool = False) -> np.ndarray:
    """Normalised predictions of the fine-tuned teacher + head for model inputs: ``(B, T)`` (with
    ``features``, the pooled layers the head reads instead)."""
    teacher.module.eval()
    head.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(inputs), batch_size):
            o = teacher.forward(inputs[s:s + batch_size])
            out.append((head.features(o) if features else head(o)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, head.mlp[-1].out_features))


def _probe(head: FinetuneHead, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: np.ndarray,
           norm, cfg) -> tuple[float, float, float]:
    """The linear-probe stage: standardise on the training features, fit the head full-batch on the
    frozen teacher's features, keep the step with the best validation MAE.

    Returns ``(train loss, train MAE, validation MAE)`` of the kept head (user units for the MAEs).
    """
    from crysdistill.train.trainer import _mae, _masked_loss

    with torch.no_grad():
        head.mean.copy_(x_train.mean(0).float())
        head.std.copy_(x_train.std(0).float().clamp_min(1e-6))
    opt = torch.optim.AdamW(head.mlp.parameters(), lr=cfg.lr_head, weight_decay=cfg.weight_decay)
    best, best_state = float("inf"), None
    for step in range(cfg.probe_steps + 1):
        if step % 10 == 0 or step == cfg.probe_steps:
            head.eval()
            with torch.no_grad():
                val = _mae(norm.decode(head.from_features(x_val).double().numpy()), y_val)
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in head.state_dict().items()}
            head.train()
        if step == cfg.probe_steps:
            break
        loss = _masked_loss(head.from_features(x_train), y_train, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.load_state_dict(best_state)
    head.eval()
    with torch.no_grad():
        pred = head.from_features(x_train)
        loss = float(_masked_loss(pred, y_train, cfg.loss))
    return loss, _mae(norm.decode(pred.double().numpy()), norm.decode(y_train.double().numpy())), best


def _probe_stage(head: FinetuneHead, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                 y_val: np.ndarray, norm, cfg) -> tuple[FinetuneHead, float, float, float, dict[str, float]]:
    """The probe's candidates on the frozen teacher's features, the best on validation kept.

    ``head`` (standardisation set) is fitted by :func:`_probe`; with ``cfg.probe_grid`` the MLPs of
    ``crysdistill head`` are fitted too (on the same standardised features and normalised labels;
    without touching the global random stream, so the fine-tuning's batches and dropout do not
    depend on it).

    Returns:
        ``(head, train loss, train MAE, validation MAE, {candidate: validation MAE})`` of the kept head.
    """
    from crysdistill.train.head import MLP_DEPTH, MLP_DROPOUT, MLP_GRID, fit_mlp
    from crysdistill.train.trainer import _mae, _masked_loss

    p_loss, p_train, p_val = _probe(head, x_train, y_train, x_val, y_val, norm, cfg)
    cands = {f"mlp(h={cfg.head_hidden},depth=1,{cfg.loss})": p_val}
    best = (head, p_loss, p_train, p_val)
    y_fit = np.concatenate([y_train.double().cpu().numpy(), norm.encode(y_val)])
    if not cfg.probe_grid:
        return (*best, cands)
    if not np.isfinite(y_fit).all():
        log.info("probe: the MLP grid of `crysdistill head` needs every label; with missing labels only the "
                 "first candidate is fitted")
        return (*best, cands)
    xs = ((torch.cat([x_train, x_val]) - head.mean) / head.std).double().cpu().numpy()
    fit_i, val_i = np.arange(len(x_train)), np.arange(len(x_train), len(xs))
    with torch.random.fork_rng(devices=[]):
        for hidden, wd in MLP_GRID:
            model, _ = fit_mlp(xs, y_fit, fit_i, val_i, hidden, wd, seed=cfg.seed)
            cand = FinetuneHead(head.layers, xs.shape[1], hidden, y_fit.shape[1], depth=MLP_DEPTH, dropout=MLP_DROPOUT)
            cand.mlp.load_state_dict(model.state_dict())
            cand = cand.to(x_train.device)
            cand.eval()
            with torch.no_grad():
                cand.mean.copy_(head.mean)
                cand.std.copy_(head.std)
                val = _mae(norm.decode(cand.from_features(x_val).double().cpu().numpy()), y_val)
                pred = cand.from_features(x_train)
            cands[f"mlp(h={hidden},wd={wd:g})"] = val
            if val < best[3]:
                best = (cand, float(_masked_loss(pred, y_train, cfg.loss)),
                        _mae(norm.decode(pred.double().cpu().numpy()), norm.decode(y_train.double().cpu().numpy())), val)
    return (*best, cands)


def finetune(cfg: FinetuneConfig, data, out: str | Path, resume: bool = False) -> dict:
    """Fine-tune ``cfg.teacher`` on ``cfg.targets``; return (and write) ``summary.json``'s content.

    Raises:
        UserError: a teacher that cannot be fine-tuned, no target, splits that do not fit, a
            structure the teacher cannot embed (with ``on_error="raise"``), or ``--resume``
            without a ``last.pt`` or with another config.
    """
    import yaml

    from crysdistill.config import to_dict
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.predict import write_predictions
    from crysdistill.train.trainer import _mae, _masked_loss, prepare
    from crysdistill.utils import (
        atomic_save,
        atomic_write_text,
        cosine_schedule,
        load_checkpoint,
        resolve_device,
        restore_run,
        seed_everything,
    )

    t_start = time.perf_counter()
    out = Path(out)
    if not cfg.targets:
        raise ConfigError("no target given; pass --target KEY")
    if resume and not (out / "last.pt").exists():
        raise UserError(f"{out}: nothing to resume (no last.pt); start without --resume")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    teacher = load_teacher(cfg.teacher, device=str(device))
    if not type(teacher).finetunable():
        raise UserError(f"teacher {teacher.spec} cannot be fine-tuned: its plugin does not implement inputs() and "
                        "forward() (chgnet and sevennet do)")
    base_fp = teacher.fingerprint
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=cfg.on_error)
    # the same structures, split the same way, as `crysdistill train` with these sizes and seeds
    tcfg = TrainConfig(student=cfg.student, targets=list(cfg.targets), train_size=cfg.train_size,
                       val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed, split_seed=cfg.split_seed,
                       on_error=cfg.on_error, cache_dir=cfg.cache_dir, workers=cfg.workers, device="cpu",
                       target_transform=cfg.target_transform)
    prep = prepare(replace(tcfg, teacher=cfg.teacher, distill=replace(tcfg.distill, node_weight=0.0)), ds,
                   teacher=teacher)
    by_id = {r.id: r for r in ds.records}
    records = [by_id[i] for i in prep.graphs.ids]
    splits, norm = prep.splits, prep.normalizer
    used = np.concatenate([splits["train"], splits["val"], splits["test"]])
    t0 = time.perf_counter()
    inputs: dict[int, object] = dict(zip(used.tolist(), teacher.inputs([records[i].structure for i in used])))
    log.info("built %d %s graphs in %.0f s", len(inputs), teacher.spec, time.perf_counter() - t0)

    seed_everything(cfg.seed)
    module = teacher.module
    module.requires_grad_(True)
    frozen = 0
    if cfg.freeze_layers:
        try:
            blocks = teacher.blocks()
        except NotImplementedError:
            raise ConfigError(f"teacher {teacher.spec} does not name its blocks; freeze_layers needs them") from None
        if cfg.freeze_layers > len(blocks):
            raise ConfigError(f"freeze_layers={cfg.freeze_layers} but {teacher.spec} has {len(blocks)} layers")
        for b in blocks[:cfg.freeze_layers]:
            b.requires_grad_(False)
            frozen += sum(p.numel() for p in b.parameters())
    layers = head_layers(teacher, cfg.pool)
    arch = {"head_hidden": cfg.head_hidden, "head_depth": 1, "head_dropout": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = out / "last.pt", out / "teacher.pt", out / "metrics.csv"
    if resume:  # the head the probe stage chose
        saved = load_checkpoint(last_path)
        arch = {k: saved.get(k, v) for k, v in arch.items()}
    head = FinetuneHead(layers, sum(int(teacher.layer_widths[k]) for k in layers), arch["head_hidden"],
                        len(cfg.targets), depth=arch["head_depth"], dropout=arch["head_dropout"]).to(device)
    backbone = [p for p in module.parameters() if p.requires_grad]
    steps = max(1, math.ceil(len(splits["train"]) / cfg.batch_size))
    total = max(1, cfg.epochs * steps)
    y_norm = torch.tensor(norm.encode(prep.y), dtype=torch.float32)

    start, best_val, best_epoch, elapsed = 0, float("inf"), -1, 0.0
    if not resume:
        atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), out / "config.yaml")
        split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
        atomic_write_text(json.dumps({"seed": cfg.seed, "split_seed": split_seed, "data": str(ds.source),
                                      **{k: [prep.graphs.ids[i] for i in v] for k, v in splits.items()}}),
                          out / "splits.json")
        with open(metrics_path, "w", newline="") as fh:
            csv.writer(fh).writerow(FIELDS)
    record = {"kind": FINETUNED_KIND, "format": FORMAT, "plugin": teacher.name, "base_variant": teacher.variant,
              "base_spec": teacher.spec, "base_fingerprint": base_fp, **head.arch, "head_layers": layers, "targets": list(cfg.targets), "normalizer": norm.to_dict(),
              "pool": f"mean of layers {','.join(map(str, layers))}",
              "fine_tuned_on": {"data": str(ds.source), "targets": list(cfg.targets), "n_train": len(splits["train"]),
                                "n_val": len(splits["val"]), "seed": cfg.seed,
                                # whose labels it has seen: a later run must not test on them
                                "seen_ids": [prep.graphs.ids[i] for i in np.concatenate([splits["train"],
                                                                                         splits["val"]])],
                                "split_seed": cfg.seed if cfg.split_seed is None else cfg.split_seed},
              "base_trained_on": teacher.training.to_dict(), "config": to_dict(cfg)}
    log.info("fine-tuning %s on %s: %d training structures, %d validation; %d of %d backbone parameters trained",
             teacher.spec, ", ".join(cfg.targets), len(splits["train"]), len(splits["val"]),
             sum(p.numel() for p in backbone), sum(p.numel() for p in module.parameters()))
    use_bar = sys.stderr.isatty()
    train_idx = splits["train"]
    probe: dict[str, float] = {}
    if not resume:
        # the linear-probe stage: the head fitted on the frozen teacher is fine-tuning's start and epoch 0
        t0 = time.perf_counter()
        tr, va = train_idx.tolist(), splits["val"].tolist()
        x_tr = torch.tensor(predict_inputs(teacher, head, [inputs[i] for i in tr], cfg.batch_size, features=True))
        x_va = torch.tensor(predict_inputs(teacher, head, [inputs[i] for i in va], cfg.batch_size, features=True))
        with torch.no_grad():  # the standardisation, from the training split's float64 features
            head.mean.copy_(x_tr.mean(0).float())
            head.std.copy_(x_tr.std(0).float().clamp_min(1e-6))
        x_tr, x_va = x_tr.float().to(device), x_va.float().to(device)
        if cfg.probe_steps:
            head, p_loss, p_train, p_val, probe = _probe_stage(head, x_tr, y_norm[tr].to(device), x_va, prep.y[va],
                                                               norm, cfg)
            record.update(head.arch)
            best_val, best_epoch = p_val, 0
            atomic_save({**record, "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                         "head": head.state_dict(), "epoch": 0, "val_mae": p_val}, best_path)
            with open(metrics_path, "a", newline="") as fh:
                csv.writer(fh).writerow([0, 0.0, cfg.lr_head, p_loss, p_train, p_val,
                                         round(time.perf_counter() - t0, 2)])
            log.info("probe on the frozen %s: %s; kept %s (train MAE %.4g)  %.0f s", teacher.spec,
                     "  ".join(f"{k} val MAE {v:.4g}" for k, v in probe.items()), min(probe, key=probe.get), p_train,
                     time.perf_counter() - t0)
        head.train()
    opt = torch.optim.AdamW([{"params": backbone, "lr": cfg.lr_backbone}, {"params": head.parameters(), "lr": cfg.lr_head}],
                            weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, total)
    if resume:
        state = restore_run(last_path, to_dict(cfg), {"state_dict": module, "head": head}, opt, sched)
        start, best_val, best_epoch, elapsed = state["epoch"] + 1, state["best_val"], state["best_epoch"], state["seconds"]
        probe = state.get("probe", {})
        log.info("resuming %s at epoch %d (best val MAE %.4g at epoch %d)", out, start + 1, best_val, best_epoch)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        module.train()
        head.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(
            cfg.seed * 100003 + epoch)).numpy()]
        bar = None
        if use_bar:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        loss_sum, preds, trues = 0.0, [], []
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size].tolist()
            o = teacher.forward([inputs[i] for i in idx])
            pred = head(o)
            loss = _masked_loss(pred, y_norm[idx].to(device), cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(backbone) + list(head.parameters()), 5.0)
            opt.step()
            sched.step()
            if not torch.isfinite(loss):
                raise UserError(f"fine-tuning diverged at epoch {epoch + 1} (loss {float(loss)}); lower lr_backbone")
            loss_sum += float(loss.detach()) * len(idx)
            preds.append(norm.decode(pred.detach().cpu().double().numpy()))
            trues.append(prep.y[idx])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        val = splits["val"].tolist()
        val_mae = _mae(norm.decode(predict_inputs(teacher, head, [inputs[i] for i in val], cfg.batch_size)),
                       prep.y[val])
        train_mae = _mae(np.concatenate(preds), np.concatenate(trues))
        elapsed += time.perf_counter() - t0
        improved = val_mae < best_val
        if improved:
            best_val, best_epoch = val_mae, epoch + 1
            atomic_save({**record, "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                         "head": head.state_dict(), "epoch": epoch + 1, "val_mae": val_mae}, best_path)
        with open(metrics_path, "a", newline="") as fh:
            csv.writer(fh).writerow([epoch + 1, opt.param_groups[0]["lr"], opt.param_groups[1]["lr"],
                                     loss_sum / len(order), train_mae, val_mae, round(time.perf_counter() - t0, 2)])
        atomic_save({"kind": "crysdistill-finetune-state", "config": to_dict(cfg), "epoch": epoch, **head.arch,
                     "probe": probe,
                     "state_dict": module.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "best_val": best_val, "best_epoch": best_epoch,
                     "seconds": elapsed, "torch_rng": torch.get_rng_state()}, last_path)
        log.info("epoch %d/%d  loss %.4f  train MAE %.4g  val MAE %.4g%s  %.0f s", epoch + 1, cfg.epochs,
                 loss_sum / len(order), train_mae, val_mae, "  *" if improved else "", time.perf_counter() - t0)
    # the test split, once, with the weights selected on validation
    best = load_checkpoint(best_path)
    module.load_state_dict(best["state_dict"])
    head.load_state_dict(best["head"])
    test = splits["test"].tolist()
    summary = {"teacher": teacher.spec, "base_fingerprint": base_fp, "targets": list(cfg.targets),
               "data": str(ds.source), "seed": cfg.seed, "split_seed": record["fine_tuned_on"]["split_seed"],
               "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(test),
               "n_skipped": len(prep.problems), "frozen_parameters": frozen, "val_mae": best_val,
               "best_epoch": best_epoch, "epochs": cfg.epochs, "probe_candidates": probe,
               "head": {**head.arch, "layers": layers}, "test_mae": None, "test_mae_per_target": None,
               "base_trained_on": record["base_trained_on"], "train_seconds": elapsed}
    if test:
        pred = norm.decode(predict_inputs(teacher, head, [inputs[i] for i in test], cfg.batch_size))
        true = prep.y[test]
        summary["test_mae"] = _mae(pred, true)
        summary["test_mae_per_target"] = {t: float(np.nanmean(np.abs(pred[:, k] - true[:, k])))
                                          for k, t in enumerate(cfg.targets)}
        write_predictions(out / "predictions_test.csv", [prep.graphs.ids[i] for i in test], list(cfg.targets), pred,
                          {prep.graphs.ids[i]: records[i].labels for i in test})
    summary["seconds"] = time.perf_counter() - t_start
    atomic_write_text(json.dumps(summary, indent=1), out / "summary.json")
    return summary


def own_predictions(teacher, structures: list, batch_size: int = 16, progress=None) -> np.ndarray:
    """What a fine-tuned teacher (the ``finetuned`` plugin) predicts with its own head, ``(n, T)`` in user units.

    ``teacher.ckpt["targets"]`` names the columns. ``progress`` (optional) is called as
    ``progress(done, total)`` after each chunk.
    """
    from crysdistill.train.splits import Normalizer

    ckpt = teacher.ckpt
    head = load_head(ckpt, teacher)
    out = []
    chunk = 512  # graphs are built a chunk at a time, not all at once (a corpus is large)
    for s in range(0, len(structures), chunk):
        out.append(predict_inputs(teacher, head, teacher.inputs(structures[s:s + chunk]), batch_size))
        if progress is not None:
            progress(min(s + chunk, len(structures)), len(structures))
    pred = np.concatenate(out) if out else np.zeros((0, len(ckpt["targets"])))
    return Normalizer.from_dict(ckpt["normalizer"]).decode(pred)


def predict_finetuned(path, data, output, on_error: str = "raise", device: str = "auto", limit: int | None = None,
                      batch_size: int = 16) -> dict:
    """Predict with a fine-tuned teacher (``crysdistill predict --checkpoint DIR/teacher.pt``)."""
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.distill.cache import check_records
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.predict import write_predictions
    from crysdistill.utils import load_checkpoint, resolve_device

    ckpt = load_checkpoint(path)
    teacher = load_teacher(str(path), device=str(resolve_device(device)))  # the `finetuned` plugin: frozen weights
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=on_error, limit=limit)
    records, problems = check_records(teacher, ds.records, on_error=on_error)
    pred = own_predictions(teacher, [r.structure for r in records], batch_size)
    mae = write_predictions(output, [r.id for r in records], list(ckpt["targets"]), pred,
                            {r.id: r.labels for r in records})
    return {"n_predicted": len(records), "n_skipped": len(ds.problems) + len(problems),
            "problems": list(ds.problems) + problems, "mae": mae}
