"""Encoder distillation on an unlabelled corpus: a student that carries the teacher and needs no teacher.

The student's encoder is trained, with no labels, so that its atom embeddings reproduce the
frozen teacher's on every structure of a corpus (Ekström Kelvinius et al., NeurIPS 2023, feature
distillation). For each chosen teacher layer ``l`` (each L2-normalised per atom, as cached), a
learnable linear map ``P_l`` of the student's last atom embedding ``s`` predicts it; the loss is

.. math::
    L = \\frac{1}{K} \\sum_l \\frac{\\mathrm{mean}_a \\lVert P_l s_a - t_{l,a} \\rVert^2}{\\sigma_l^2},

where ``σ_l²`` is the total variance of layer ``l`` over the atoms of the training corpus, so
``1 − L_l`` on the held-out part of the corpus is the **explained variance** of layer ``l``: 0 for
predicting the mean atom, 1 for reproducing the teacher exactly. The student's prediction head is
not trained (nothing to predict yet). The result, ``student.pt``, is an ordinary student checkpoint
plus a record of the teacher, its layers, the corpus and the metrics; ``crysdistill train --init``
starts from it on any labelled target, and the trained student predicts without any teacher.

Graphs and teacher embeddings come from the on-disk caches (built once, read lazily), so a corpus
larger than memory streams; ``last.pt`` is written atomically every epoch and ``--resume``
continues it. Started by ``torchrun``, the run is data parallel (DistributedDataParallel; gloo on
CPU, one GPU per process with nccl): rank 0 fills the caches while the others wait, then every
process trains on its share of each epoch's batches and the held-out metric is summed over them;
rank 0 alone writes the run folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from crysdistill.errors import CheckpointError, ConfigError, UserError

log = logging.getLogger("crysdistill.distill")

KIND = "crysdistill-distilled-student"


@dataclass
class CorpusDistillConfig:
    """Everything that determines an encoder-distillation run (``config.yaml`` of the run folder).

    Attributes:
        student: registered student name.
        model: the student's model config (must match the config it is later fine-tuned with).
        teacher: any ``--teacher`` value.
        teacher_layers: teacher layers reproduced (``[]`` = all).
        epochs: passes over the corpus.
        batch_size: structures per step.
        lr: peak learning rate (AdamW, cosine decay to 1 %).
        weight_decay: AdamW weight decay.
        val_fraction: share of the corpus held out for the explained-variance metric.
        seed: seed of the held-out split, the initial weights and the batch order.
        on_error: structures that cannot be read, featurised or embedded: ``skip`` (default) or ``raise``.
        workers: graph-building processes.
        cache_dir: graph and embedding cache.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads (0 = torch's default).
    """

    student: str = "cgcnn"
    model: dict = field(default_factory=dict)
    teacher: str = "sevennet"
    teacher_layers: list[int] = field(default_factory=list)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.05
    seed: int = 0
    on_error: Literal["raise", "skip"] = "skip"
    workers: int = 2
    cache_dir: str | None = None
    device: str = "auto"
    threads: int = 0


def layer_moments(emb, indices, widths: list[int], max_structures: int = 2000, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean atom embedding ``(ΣD_l,)`` and total variance of each teacher layer ``(K,)`` over the atoms of
    (a seeded sample of) the structures ``indices``."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(indices, size=min(len(indices), max_structures), replace=False)
    node = np.concatenate([np.asarray(emb.store.get(emb.keys[i])["node"], dtype=np.float64) for i in pick])
    bounds = np.concatenate([[0], np.cumsum(widths)])
    return node.mean(0), np.array([node[:, a:b].var(0).sum() for a, b in zip(bounds[:-1], bounds[1:])])


class LayerRegression(torch.nn.Module):
    """Linear maps from the (layer-normalised) student atom embedding to each teacher layer, and the
    normalised loss.

    Args:
        student_dim: width of the student's atom embeddings.
        widths: width of each teacher layer.
        variances: total variance of each teacher layer (the loss of layer ``l`` is divided by it).
        mean: mean teacher atom embedding; given, the map starts by predicting it (weights 0).
    """

    def __init__(self, student_dim: int, widths: list[int], variances, mean=None) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.norm = torch.nn.LayerNorm(student_dim)  # the student's scale is its own business
        self.proj = torch.nn.Linear(student_dim, sum(self.widths))
        if mean is not None:  # start from the mean atom: loss 1 per layer, explained variance 0
            torch.nn.init.zeros_(self.proj.weight)
            with torch.no_grad():
                self.proj.bias.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("variances", torch.as_tensor(np.asarray(variances), dtype=torch.float32))

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-layer normalised squared errors ``(K,)`` of student atoms ``s`` ``(N, D_s)`` against ``t`` ``(N, ΣD_l)``."""
        err = (self.proj(self.norm(s)) - t).pow(2)
        parts = torch.split(err, self.widths, dim=1)
        return torch.stack([p.sum(1).mean() for p in parts]) / self.variances.clamp_min(1e-12)


class _DistillStep(torch.nn.Module):
    """Student encoder and layer maps as one module, so that DistributedDataParallel sees the whole
    step: per-layer normalised losses of a batch against the teacher targets ``tt``."""

    def __init__(self, adapter, head: LayerRegression) -> None:
        super().__init__()
        self.adapter, self.head = adapter, head

    def forward(self, batch, tt) -> torch.Tensor:
        from crysdistill.distill.losses import matched_teacher_nodes

        o = self.adapter(batch)
        return self.head(o.node_embedding, matched_teacher_nodes(o, tt))


def corpus_fingerprint(keys) -> str:
    h = hashlib.sha1()
    for k in sorted(keys):
        h.update(k.encode())
    return h.hexdigest()[:16]


def distill_corpus(cfg: CorpusDistillConfig, data, out: str | Path, resume: bool = False,
                   limit: int | None = None) -> dict:
    """Distil the teacher's atom embeddings into the student's encoder on an unlabelled corpus.

    Args:
        cfg: the run's config.
        data: a dataset path or :class:`~crysdistill.data.readers.Dataset` (labels are ignored).
        out: run folder: ``config.yaml``, ``metrics.csv``, ``student.pt`` (best on the held-out
            explained variance), ``last.pt``, ``summary.json``.
        resume: continue from ``out/last.pt``.
        limit: read at most this many structures.

    Returns:
        ``summary.json``'s content.
    """
    import yaml

    from crysdistill.config import to_dict
    from crysdistill.data.cache import build_graphs
    from crysdistill.data.readers import Dataset, read_dataset
    from crysdistill.distill.cache import TeacherEmbeddings, check_records, embed_records, normalize_layers
    from crysdistill.distill.losses import TeacherTargets
    from crysdistill.students.checkpoint import save_student
    from crysdistill.students.registry import build_student
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.utils import (
        atomic_save,
        atomic_write_text,
        build_progress,
        cosine_schedule,
        load_checkpoint,
        restore_run,
        seed_everything,
        setup_distributed,
    )

    out = Path(out)
    if resume and not (out / "last.pt").exists():
        raise UserError(f"{out}: nothing to resume (no last.pt); start without --resume")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, not {cfg.val_fraction}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    # rank 0 alone embeds a corpus that is not cached yet (hours on a CPU): the others wait that long
    d = setup_distributed(cfg.device, timeout_s=7 * 24 * 3600)
    device = d.device
    adapter = build_student(cfg.student, cfg.model, n_targets=1)  # an unknown student or key fails first
    teacher = load_teacher(cfg.teacher, device=device)
    ks = normalize_layers(cfg.teacher_layers or list(range(teacher.n_layers + 1)), teacher.n_layers)
    widths = [int(teacher.layer_widths[k]) for k in ks]

    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=cfg.on_error, limit=limit)
    if not d.main:
        d.barrier()  # rank 0 builds the graphs and embeds the corpus; the others then read the caches
    problems = list(ds.problems)
    records, bad = check_records(teacher, ds.records, on_error=cfg.on_error)
    problems += bad
    graphs = build_graphs(records, adapter.featurizer(), cache_dir=cfg.cache_dir, workers=cfg.workers,
                          on_error=cfg.on_error, progress=build_progress(f"{cfg.student} graphs") if d.main else None)
    problems += graphs.problems
    if len(graphs) < 10:
        raise UserError(f"{ds.source}: only {len(graphs)} usable structures; a corpus needs many more")
    by_id = {r.id: r for r in records}
    aligned = [by_id[i] for i in graphs.ids]
    emb = embed_records(teacher, aligned, ks, cache_dir=cfg.cache_dir, workers=cfg.workers,
                        progress=build_progress(f"{teacher.spec} embeddings") if d.main else None)
    if d.main:
        d.barrier()
    emb = TeacherEmbeddings(emb.store, list(graphs.keys), emb.dim, emb.fingerprint, emb.n_computed)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(graphs))
    n_val = max(1, int(round(cfg.val_fraction * len(graphs))))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    mean, variances = layer_moments(emb, train_idx, widths, seed=cfg.seed)

    seed_everything(cfg.seed)
    adapter = build_student(cfg.student, cfg.model, n_targets=1).to(device)
    head = LayerRegression(adapter.embedding_dim, widths, variances, mean).to(device)
    step_module = _DistillStep(adapter, head)
    ddp = step_module
    if d.world > 1:  # the prediction head is not on the path to the atom embeddings: unused parameters
        ddp = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    params = list(adapter.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # each process takes every world-th structure of an epoch's order, in batches of batch_size / world
    # (so a step sees batch_size structures in all); the order is cut to a multiple of world so that
    # every process takes the same number of steps
    per_rank = max(1, math.ceil(cfg.batch_size / d.world))
    n_epoch = len(train_idx) - len(train_idx) % d.world
    if n_epoch == 0:
        raise UserError(f"{ds.source}: {len(train_idx)} training structures cannot be shared among {d.world} "
                        "processes; use fewer processes or a larger corpus")
    steps = max(1, math.ceil(n_epoch // d.world / per_rank))
    total = max(1, cfg.epochs * steps)
    sched = cosine_schedule(opt, total)
    teacher_fp = teacher.weights_fingerprint()

    def batches(idx, size):
        for s in range(0, len(idx), size):
            b = [int(i) for i in idx[s:s + size]]
            tt: TeacherTargets = emb.targets(b)
            yield adapter.to_device(adapter.collate([graphs[i] for i in b]), device), tt.to(device), len(b)

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), out / "config.yaml")
    metrics_path, last_path, best_path = out / "metrics.csv", out / "last.pt", out / "student.pt"
    names = [teacher.layer_names[k] for k in ks]
    fields = ["epoch", "lr", "train_loss", "val_loss"] + [f"val_ev_L{k}" for k in ks] + ["seconds"]
    start, best, best_epoch, elapsed = 0, float("inf"), -1, 0.0
    if resume:
        state = restore_run(last_path, to_dict(cfg), {"state_dict": adapter, "head": head}, opt, sched)
        start, best, best_epoch, elapsed = state["epoch"] + 1, state["best"], state["best_epoch"], state["seconds"]
        if d.main:
            log.info("resuming %s at epoch %d", out, start + 1)
    elif d.main:
        with open(metrics_path, "w", newline="") as fh:
            csv.writer(fh).writerow(fields)
    record = {"teacher": teacher.spec, "teacher_fingerprint": teacher.fingerprint, "teacher_layers": ks,
              "layer_names": names, "layer_widths": widths, "trained_on": teacher.training.to_dict(),
              "corpus": str(ds.source), "corpus_fingerprint": corpus_fingerprint(graphs.keys),
              "n_train": len(train_idx), "n_val": len(val_idx), "split_seed": cfg.seed}
    if d.main:
        log.info("distilling %s into %s on %d structures (%d held out), layers %s%s", teacher.spec, cfg.student,
                 len(train_idx), len(val_idx), ",".join(map(str, ks)),
                 f", {d.world} processes on {device.type}" if d.world > 1 else "")
    use_bar = sys.stderr.isatty() and d.main
    ev: dict[int, float] = {}
    trained_keys: set[str] = set()
    if resume:
        trained_keys.update(load_checkpoint(last_path).get("trained_keys", []))
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        adapter.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(
            cfg.seed * 100003 + epoch)).numpy()][:n_epoch][d.rank::d.world]
        bar = None
        if use_bar:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        total_loss, n_seen = 0.0, 0
        for batch, tt, n in batches(order, per_rank):
            loss = ddp(batch, tt).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not trained_keys:  # what distillation trains: parameters on the path to the atom embeddings
                trained_keys.update(k for k, p in adapter.named_parameters() if p.grad is not None)
                trained_keys.update(k for k, _ in adapter.named_buffers())
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            if not torch.isfinite(loss):
                raise UserError(f"distillation diverged at epoch {epoch + 1}; lower lr")
            total_loss += float(loss.detach()) * n
            n_seen += n
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}")
        if bar is not None:
            bar.close()
        adapter.eval()
        sums, count = torch.zeros(len(ks), dtype=torch.float64), 0
        with torch.no_grad():  # each process its share of the held-out structures, summed over them
            for batch, tt, n in batches(val_idx[d.rank::d.world], cfg.batch_size):
                sums += step_module(batch, tt).cpu().double() * n
                count += n
        reduced = d.all_sum([*sums.tolist(), count, total_loss, n_seen]).tolist()
        sums, count, total_loss, n_seen = torch.tensor(reduced[:len(ks)]), *reduced[len(ks):]
        val_layers = (sums / count).numpy()
        val_loss = float(val_layers.mean())
        ev = {int(k): float(1 - v) for k, v in zip(ks, val_layers)}
        elapsed += time.perf_counter() - t0
        improved = val_loss < best
        if improved:
            best, best_epoch = val_loss, epoch + 1
        if not d.main:
            continue
        if improved:
            save_student(adapter, best_path, distilled=True,
                         distillation={**record, "epoch": epoch + 1, "val_explained_variance": ev},
                         distill_head=head.state_dict(), trained_keys=sorted(trained_keys),
                         featurizer_fingerprint=adapter.featurizer().fingerprint())
        with open(metrics_path, "a", newline="") as fh:
            csv.writer(fh).writerow([epoch + 1, opt.param_groups[0]["lr"], total_loss / max(n_seen, 1), val_loss]
                                    + [ev[int(k)] for k in ks] + [round(time.perf_counter() - t0, 2)])
        atomic_save({"kind": "crysdistill-distill-state", "config": to_dict(cfg), "epoch": epoch,
                     "state_dict": adapter.state_dict(), "head": head.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "best": best, "best_epoch": best_epoch, "seconds": elapsed,
                     "torch_rng": torch.get_rng_state(), "trained_keys": sorted(trained_keys)}, last_path)
        log.info("epoch %d/%d  train %.4f  held-out %.4f%s  explained variance %s  %.0f s", epoch + 1, cfg.epochs,
                 total_loss / max(n_seen, 1), val_loss, "  *" if improved else "",
                 " ".join(f"L{k} {v:.3f}" for k, v in ev.items()), time.perf_counter() - t0)
    if teacher.weights_fingerprint() != teacher_fp:
        raise RuntimeError("the teacher's weights changed during distillation")
    d.barrier()  # rank 0 has written student.pt
    if not d.main:
        return {}
    best_ckpt = load_checkpoint(best_path) if best_path.exists() else {}
    summary = {**record, "student": cfg.student, "model": adapter.config, "best_epoch": best_epoch,
               "val_loss": best, "val_explained_variance": best_ckpt.get("distillation", {}).get(
                   "val_explained_variance", ev),
               "epochs": cfg.epochs, "n_skipped": len(problems), "teacher_computed": emb.n_computed,
               "seconds": time.perf_counter() - t_start}
    atomic_write_text(json.dumps(summary, indent=1), out / "summary.json")
    summary["problems"] = problems
    return summary


# ---- starting a student from a distilled encoder --------------------------------------------------

def bundled_students() -> dict[str, Path]:
    """Pre-distilled students shipped inside the package, by name: ``weights/student-<name>.pt``."""
    folder = Path(__file__).resolve().parent.parent / "weights"
    return {f.name[len("student-"):-len(".pt")]: f for f in sorted(folder.glob("student-*.pt"))}


def resolve_init(init: str) -> Path:
    """A shipped pre-distilled student's name (``cgcnn-sevennet``) or a path → the file.

    Raises:
        CheckpointError: neither.
    """
    shipped = bundled_students()
    if init in shipped and not Path(init).exists():
        return shipped[init]
    p = Path(init)
    if not p.is_file():
        raise CheckpointError(f"{init}: neither a student.pt nor a shipped pre-distilled student (shipped: "
                              f"{', '.join(shipped) or 'none'}; 'crysdistill students list' shows them)")
    return p


def init_from(adapter, init: str) -> dict:
    """Load the encoder weights of a distilled (or any) student checkpoint into ``adapter``.

    Tensors that distillation trained (the encoder) and whose names and shapes match are copied;
    the rest (the prediction head, the input layer when extra atom features are injected) keep
    their fresh initialisation.

    Returns:
        ``{"init": path, "loaded": n, "kept": [names], "distillation": record or None}``.

    Raises:
        CheckpointError: another student, another model config, or another featuriser.
    """
    from crysdistill.utils import load_checkpoint

    path = resolve_init(init)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "crysdistill-student":
        raise CheckpointError(f"{path}: is a {ckpt.get('kind')!r} checkpoint, not a student checkpoint")
    d = ckpt["student"]
    if d["name"] != adapter.name:
        raise CheckpointError(f"{path}: is a {d['name']!r} encoder; --init needs one of {adapter.name!r} "
                              f"(or train --student {d['name']})")
    diff = {k for k in set(d["config"]) | set(adapter.config) if d["config"].get(k) != adapter.config.get(k)}
    if diff:
        detail = ", ".join(f"{k}: {d['config'].get(k)!r} there, {adapter.config.get(k)!r} here" for k in sorted(diff))
        raise CheckpointError(f"{path}: made with another {adapter.name} model config ({detail}); use the same "
                              "model.* settings as the distilled encoder")
    fp = ckpt.get("featurizer_fingerprint")
    if fp and fp != adapter.featurizer().fingerprint():
        raise CheckpointError(f"{path}: made with another featuriser than this installation builds for "
                              f"{adapter.name!r}; distil it again with this version")
    own = adapter.state_dict()
    loaded, kept = {}, []
    # a distilled encoder names what distillation trained: the untrained prediction head is not copied,
    # so fine-tuning seeds keep their own head initialisation
    wanted = set(ckpt.get("trained_keys") or ckpt["state_dict"])
    for k, v in ckpt["state_dict"].items():
        if k in wanted and k in own and own[k].shape == v.shape:
            loaded[k] = v
    kept = sorted(set(own) - set(loaded))
    own.update(loaded)
    adapter.load_state_dict(own)
    return {"init": str(path), "loaded": len(loaded), "kept": kept, "distillation": ckpt.get("distillation")}
