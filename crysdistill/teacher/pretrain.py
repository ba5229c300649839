"""Self-supervised pretraining of the CrysGNN teacher on unlabelled crystals.

The loop: seeded validation split (recorded in the run folder), AdamW with linear warm-up and
cosine decay per step, gradient clipping, per-epoch ``metrics.csv`` with every task's loss and
accuracy on training and validation data, atomic checkpoints every epoch (``last.pt`` to resume,
``teacher.pt`` + ``teacher.heads.pt`` for the best validation loss), and data parallelism under
``torchrun`` (DistributedDataParallel, gloo on CPU, nccl on GPU). Graphs are read lazily from the
on-disk cache, so memory does not grow with the corpus and later epochs do no neighbour search.

Random streams are derived from ``(seed, epoch, rank)`` at the start of every epoch, so a resumed
run continues exactly as an uninterrupted one would have.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from crysdistill.config import from_dict, load_config, to_dict
from crysdistill.data.batch import collate
from crysdistill.data.cache import GraphSet
from crysdistill.data.graph import GraphSettings
from crysdistill.errors import ConfigError, UserError
from crysdistill.teacher.checkpoint import heads_path, save_heads, save_teacher
from crysdistill.teacher.data import GraphDataset, check_labels, data_fingerprint, stream_graphs
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig
from crysdistill.teacher.pretext.base import PretextResult, build_task, task_label_keys
from crysdistill.teacher.pretext.connectivity import ConnectivityReconstruction
from crysdistill.utils import Dist, atomic_save, atomic_write_text, load_checkpoint, seed_everything, setup_distributed

log = logging.getLogger("crysdistill.pretrain")

STATE_KIND = "crysdistill-pretrain-state"

#: The CrysGNN pretext tasks, 0.25 each, with a hidden layer in the space-group head and a
#: projection head for the crystal-system contrast (configs/crysgnn.yaml turns both off).
DEFAULT_TASKS = {name: {"weight": 0.25, "options": {}}
                 for name in ("node_features", "connectivity", "space_group", "crystal_system")}
DEFAULT_TASKS["space_group"]["options"] = {"hidden": 256}
DEFAULT_TASKS["crystal_system"]["options"] = {"projection": 64}

#: Encoder settings that differ from :class:`EncoderConfig`'s own (CrysGNN's): bond orientations
#: q_1…q_8 in the atom input. Checkpoints record every setting, so older runs keep theirs.
DEFAULT_ENCODER = {"angular_orders": 8}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, stepped every batch.

    Attributes:
        lr: peak learning rate (CrysGNN's 0.03 with plain Adam is aggressive; 2e-3 is stable).
        weight_decay: decoupled weight decay.
        warmup_epochs: linear warm-up from 0 to ``lr`` over this many epochs (may be fractional).
        min_lr_ratio: the cosine decays to ``lr · min_lr_ratio`` at the last step.
        grad_clip: clip the global gradient norm to this (0 = off).
    """

    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optim: lr must be > 0, weight_decay and warmup_epochs >= 0, min_lr_ratio in [0, 1]")


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (stored in ``last.pt`` and ``teacher.pt``).

    Attributes:
        encoder: encoder sizes and input (bond orientations ``angular_orders``, default 8; 0 is CrysGNN's).
        graph: crystal-graph settings (symmetry labels are needed by the space-group and
            crystal-system tasks).
        tasks: ``{name: {"weight": w, "options": {…}}}``; names are ``crysdistill.pretext`` entry
            points; a weight of 0 leaves the task out. Entries merge into the defaults (the CrysGNN
            tasks, with the two head options of :data:`DEFAULT_TASKS`).
        optim: optimiser and schedule.
        batch_size: structures per optimiser step (over all processes together).
        epochs: passes over the training split.
        val_fraction: share of the structures held out for validation (seeded).
        seed: seed of the split, the initial weights and every random stream.
        loader_workers: DataLoader worker processes (read and collate graphs in parallel).
        threads: torch intra-op threads per process (0 = torch's default, one per core). One is
            the default: the encoder's small matrix products gain little from more, and on a
            shared 2-core machine 2 threads ran 4× slower than 1 (oversubscription).
        centroid_structures: training structures used for the crystal-system centroids and the
            majority baselines stored with the heads.
    """

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(**DEFAULT_ENCODER))
    graph: GraphSettings = field(default_factory=GraphSettings)
    tasks: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_TASKS)))
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 128
    epochs: int = 20
    val_fraction: float = 0.05
    seed: int = 0
    loader_workers: int = 1
    threads: int = 1
    centroid_structures: int = 4096

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.loader_workers < 0 or self.threads < 0 or self.centroid_structures < 1:
            raise ConfigError("loader_workers and threads must be >= 0, centroid_structures >= 1")
        if self.encoder.atom_features != self.graph.atom_feature_dim or \
                self.encoder.edge_features != self.graph.n_gaussians:
            raise ConfigError(
                f"encoder.atom_features/edge_features ({self.encoder.atom_features}/{self.encoder.edge_features}) "
                f"must match the graph ({self.graph.atom_feature_dim} atom features, "
                f"{self.graph.n_gaussians} Gaussians)")
        if not isinstance(self.tasks, Mapping) or not any(
                float((spec or {}).get("weight", 0.25)) > 0 for spec in self.tasks.values()):
            raise ConfigError("tasks: at least one pretext task needs a weight > 0")
        for name, spec in self.active_tasks().items():
            build_task(name, self.encoder.width, self.graph, spec)  # a bad task or option fails now, before any data is read

    def label_keys(self) -> tuple[str, ...]:
        """Record labels the active pretext tasks read (:attr:`PretextTask.label_keys`)."""
        return task_label_keys(build_task(name, self.encoder.width, self.graph, spec)
                               for name, spec in self.active_tasks().items())

    def active_tasks(self) -> dict[str, dict]:
        """Tasks with a weight > 0, as ``{name: {"weight": w, "options": {…}}}``."""
        out = {}
        for name, spec in self.tasks.items():
            spec = dict(spec or {})
            spec.setdefault("weight", 0.25)
            spec.setdefault("options", {})
            if float(spec["weight"]) > 0:
                out[name] = spec
        return out


def load_pretrain_config(path: str | os.PathLike | None = None, overrides: tuple[str, ...] | list[str] = (),
                         extra: dict | None = None) -> PretrainConfig:
    """Defaults ← YAML ← ``extra`` (CLI flags) ← ``key=value`` overrides; tasks merge into the defaults.

    Raises:
        ConfigError: unknown key (with the nearest valid one) or a bad value.
    """
    return load_config(PretrainConfig, path, overrides, extra,
                       base={"tasks": json.loads(json.dumps(DEFAULT_TASKS)), "encoder": dict(DEFAULT_ENCODER)})


class PretrainModel(nn.Module):
    """Encoder plus pretext tasks; ``forward`` returns the weighted loss and every task's result.

    One module so that DistributedDataParallel sees the whole step (tasks may run the encoder
    again on a modified input).
    """

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__()
        self.encoder = CrysGNNEncoder(config.encoder)
        self.tasks = nn.ModuleDict({
            name: build_task(name, config.encoder.width, config.graph, spec)
            for name, spec in config.active_tasks().items()
        })

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Record labels some task reads (attached to every batch), sorted."""
        return task_label_keys(self.tasks.values())

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, PretextResult]]:
        out = self.encoder(batch)
        results = {name: task(batch, out, self.encoder) for name, task in self.tasks.items()}
        loss = sum(task.weight * results[name].loss for name, task in self.tasks.items())
        return loss, results


class Meter:
    """Sums of losses (weighted by structures) and counts over an epoch, reducible across processes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, loss: torch.Tensor, results: Mapping[str, PretextResult], n_graphs: int) -> None:
        s = self.sums
        s["n"] = s.get("n", 0.0) + n_graphs
        s["loss"] = s.get("loss", 0.0) + float(loss.detach()) * n_graphs
        for name, r in results.items():
            s[f"{name}/loss"] = s.get(f"{name}/loss", 0.0) + float(r.loss.detach()) * n_graphs
            for k, v in r.counts.items():
                s[f"{name}/{k}"] = s.get(f"{name}/{k}", 0.0) + float(v)

    def reduce(self, d: Dist) -> None:
        """Sum over processes (no-op in a single process)."""
        keys = sorted(self.sums)
        self.sums = dict(zip(keys, d.all_sum([self.sums[k] for k in keys]).tolist()))

    def summary(self, task_names: list[str]) -> dict[str, float]:
        """``loss`` and per task ``{task}_loss``, ``{task}_acc`` (plus ``{task}_top5``, ``{task}_mae``
        for regression tasks, which count ``abs_error``, and ``{task}_unknown``, the structures left
        out for want of a label, where the task counts them)."""
        s = self.sums
        n = max(s.get("n", 0.0), 1.0)
        out = {"loss": s.get("loss", 0.0) / n}
        for name in task_names:
            out[f"{name}_loss"] = s.get(f"{name}/loss", 0.0) / n
            total = s.get(f"{name}/total", 0.0)
            has_acc = total and f"{name}/correct" in s  # regression tasks count no correct answers
            out[f"{name}_acc"] = s[f"{name}/correct"] / total if has_acc else float("nan")
            if f"{name}/abs_error" in s:
                out[f"{name}_mae"] = s[f"{name}/abs_error"] / total if total else float("nan")
            if f"{name}/correct5" in s:
                out[f"{name}_top5"] = s[f"{name}/correct5"] / total if total else float("nan")
            if f"{name}/unknown" in s:  # structures without a label (e.g. spglib failed), left out
                out[f"{name}_unknown"] = s[f"{name}/unknown"]
        return out


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train, val)`` index arrays (sorted); at least one structure in each."""
    if n < 2:
        raise UserError(f"pretraining needs at least 2 usable structures (one for validation), got {n}")
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _to(batch, device: torch.device):
    return batch.to(device) if device.type != "cpu" else batch


class Trainer:
    """One pretraining run in ``out_dir``.

    Args:
        config: the run's config.
        graphs: all usable graphs (split here).
        out_dir: run folder.
        dist_info: process rank, world size and device.
        source: data source, for the record.
        progress: draw a tqdm bar (otherwise one log line per epoch).
    """

    def __init__(self, config: PretrainConfig, graphs: GraphSet, out_dir: Path, dist_info: Dist,
                 source: str = "", progress: bool = False) -> None:
        self.config = config
        self.graphs = graphs
        self.out = out_dir
        self.d = dist_info
        self.source = source
        self.progress = progress and dist_info.main
        self.fingerprint = data_fingerprint(graphs)
        train_idx, val_idx = split_indices(len(graphs), config.val_fraction, config.seed)
        self.train_set, self.val_set = graphs.subset(train_idx.tolist()), graphs.subset(val_idx.tolist())
        seed_everything(config.seed)
        self.model = PretrainModel(config).to(dist_info.device)
        self.task_names = list(self.model.tasks)
        self.per_rank_batch = max(1, math.ceil(config.batch_size / dist_info.world))
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_set) / dist_info.world) / self.per_rank_batch)
        total = self.steps_per_epoch * config.epochs
        warmup = int(round(config.optim.warmup_epochs * self.steps_per_epoch))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, warmup, total, config.optim.min_lr_ratio))
        self.ddp = self.model
        if dist_info.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None)
        self.epoch = 0
        self.best_val = float("inf")

    # ---------------------------------------------------------------- data

    def _loader(self, graphs: GraphSet, shuffle: bool, epoch: int) -> DataLoader:
        sampler = DistributedSampler(GraphDataset(graphs), num_replicas=self.d.world, rank=self.d.rank,
                                     shuffle=shuffle, seed=self.config.seed, drop_last=False)
        sampler.set_epoch(epoch)
        settings = self.config.graph
        if self.config.loader_workers:
            graphs.store.close()  # LMDB refuses an environment inherited through fork; workers reopen it
        return DataLoader(GraphDataset(graphs, self.model.label_keys), batch_size=self.per_rank_batch, sampler=sampler,
                          num_workers=self.config.loader_workers,
                          collate_fn=lambda items: collate(items, settings),
                          multiprocessing_context="fork" if self.config.loader_workers and sys.platform.startswith("linux") else None)

    # ---------------------------------------------------------------- state

    def state(self) -> dict:
        return {
            "kind": STATE_KIND,
            "config": to_dict(self.config),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "data_fingerprint": self.fingerprint,
        }

    def load_state(self, ckpt: dict, path: Path) -> None:
        """Restore from a ``last.pt`` of the same run."""
        if ckpt.get("kind") != STATE_KIND:
            raise UserError(f"{path}: not a pretraining state ({ckpt.get('kind')!r})")
        if ckpt.get("data_fingerprint") != self.fingerprint:
            raise UserError(f"{path}: the run was made on other data (fingerprint {ckpt.get('data_fingerprint')} "
                            f"vs {self.fingerprint}); resume with the same --data")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        self.best_val = float(ckpt["best_val"])

    def write_split(self) -> None:
        """``split.json``: seed, sizes and the ids and cache keys of the validation structures."""
        atomic_write_text(json.dumps({
            "seed": self.config.seed,
            "val_fraction": self.config.val_fraction,
            "n_train": len(self.train_set),
            "n_val": len(self.val_set),
            "data": self.source,
            "data_fingerprint": self.fingerprint,
            "val_ids": self.val_set.ids,
            "val_keys": self.val_set.keys,
        }, indent=1) + "\n", self.out / "split.json")

    # ---------------------------------------------------------------- loop

    def run_epoch(self, train: bool, epoch: int) -> dict[str, float]:
        """One pass over the training (``train``) or validation split; returns the reduced summary."""
        graphs = self.train_set if train else self.val_set
        loader = self._loader(graphs, shuffle=train, epoch=epoch)
        meter = Meter()
        self.model.train(train)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1} {'train' if train else 'val'}", leave=False)
        clip = self.config.optim.grad_clip
        for batch in loader:
            batch = _to(batch, self.d.device)
            if train:
                loss, results = self.ddp(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.optimizer.step()
                self.scheduler.step()
            else:
                with torch.no_grad():
                    loss, results = self.model(batch)
            meter.add(loss.detach(), results, int(batch.num_graphs))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}")
        if bar is not None:
            bar.close()
        meter.reduce(self.d)
        return meter.summary(self.task_names)

    def fit(self, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Train from ``self.epoch`` to ``config.epochs``; returns the last epoch's row."""
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        row: dict = {}
        while self.epoch < c.epochs:
            epoch = self.epoch
            # random streams (negative pairs, masks) depend only on (seed, epoch, rank): exact resumption
            torch.manual_seed(c.seed * 1_000_003 + epoch * 1_009 + self.d.rank)
            t0 = time.perf_counter()
            tr = self.run_epoch(True, epoch)
            with torch.random.fork_rng(devices=[self.d.device] if self.d.device.type == "cuda" else []):
                torch.manual_seed(c.seed)  # the same validation negatives every epoch
                va = self.run_epoch(False, epoch)
            seconds = time.perf_counter() - t0
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 2)}
            row.update({f"train_{k}": v for k, v in tr.items()})
            row.update({f"val_{k}": v for k, v in va.items()})
            improved = va["loss"] < self.best_val
            if improved:
                self.best_val = va["loss"]
            if self.d.main:
                self._append_metrics(row)
                if improved:
                    self.save_teacher(va)
                atomic_save(self.state(), self.out / "last.pt")
            self.d.barrier()
            if on_epoch is not None and self.d.main:
                on_epoch(self.epoch, row)
        return row

    def _append_metrics(self, row: dict) -> None:
        path = self.out / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        fieldnames = list(row)
        lines = [",".join(fieldnames)] + [",".join(str(r.get(k, "")) for k in fieldnames) for r in rows]
        atomic_write_text("\n".join(lines) + "\n", path)

    def save_teacher(self, val: dict[str, float]) -> None:
        """Write ``teacher.pt`` (encoder only, via :func:`save_teacher`) and ``teacher.heads.pt``."""
        from crysdistill.teacher.evaluate import training_statistics

        metrics = {k: v for k, v in val.items() if not (isinstance(v, float) and math.isnan(v))}
        tasks = self.config.active_tasks()
        path = self.out / "teacher.pt"
        fp = save_teacher(path, self.model.encoder, self.config.graph, tasks=tasks, metrics=metrics,
                          data_fingerprint=self.fingerprint,
                          extra={"pretrain_config": to_dict(self.config), "epoch": self.epoch,
                                 "n_train": len(self.train_set), "n_val": len(self.val_set), "data": self.source})
        n = min(self.config.centroid_structures, len(self.train_set))
        pick = np.sort(np.random.default_rng(self.config.seed + 1).permutation(len(self.train_set))[:n])
        conn = next((t for t in self.model.tasks.values() if isinstance(t, ConnectivityReconstruction)), None)
        stats = training_statistics(self.model.encoder, self.train_set.subset(pick.tolist()), self.config.graph,
                                    self.d.device, self.per_rank_batch, conn)
        heads = {name: {k: v.detach().cpu() for k, v in task.state_dict().items()}
                 for name, task in self.model.tasks.items()}
        save_heads(heads_path(path), fp, tasks, heads, stats)
        self.model.train()


def pretrain(config: PretrainConfig | None, data: str, out_dir: str | os.PathLike, *, resume: bool = False,
             epochs: int | None = None, cache_dir: str | os.PathLike | None = None, workers: int = 2, on_error: str = "skip",
             limit: int | None = None, progress: bool | None = None,
             build_progress: Callable[[int], None] | None = None) -> dict:
    """Pretrain a teacher; returns the last epoch's metrics row (on rank 0; ``{}`` on other ranks).

    Args:
        config: run config (with ``resume``, the run's stored config is used instead).
        data: dataset path.
        out_dir: run folder (``teacher.pt``, ``teacher.heads.pt``, ``last.pt``, ``metrics.csv``,
            ``split.json``, ``config.json``).
        resume: continue from ``out_dir/last.pt`` (an interrupted run loses at most one epoch).
        epochs: with ``resume``, a new total number of epochs (the cosine schedule stretches to it).
        cache_dir: graph cache folder.
        workers: processes building graphs not yet cached.
        on_error: bad records are skipped (``"skip"``, counted) or stop the run (``"raise"``).
        limit: use only the first ``limit`` records.
        progress: tqdm bars (default: when stderr is a terminal).
        build_progress: called with the records done while the graphs are built.

    Raises:
        UserError: empty data, ``resume`` without a run in ``out_dir``, data that differ from the
            resumed run's.
    """
    out = Path(out_dir)
    d = setup_distributed()
    if resume:
        state_path = out / "last.pt"
        if not state_path.is_file():
            raise UserError(f"{out}: nothing to resume (no last.pt); start a new run without --resume")
        ckpt = load_checkpoint(state_path)
        config = from_dict(PretrainConfig, ckpt.get("config", {}))
        if epochs is not None:
            config.epochs = epochs
    else:
        ckpt = None
        if config is None:
            raise ValueError("pretrain needs a config unless it resumes a run")
        if epochs is not None:
            config.epochs = epochs
        if (out / "last.pt").exists():
            raise UserError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    graphs = stream_graphs(data, config.graph, cache_dir, workers=workers, on_error=on_error, limit=limit,
                           progress=build_progress if d.main else None, expect_labels=config.label_keys() if d.main else ())
    if d.main and graphs.problems:
        log.warning("%d record(s) skipped (first: %s: %s)", len(graphs.problems), graphs.problems[0].record,
                    graphs.problems[0].reason)
    trainer = Trainer(config, graphs, out, d, source=data,
                      progress=sys.stderr.isatty() if progress is None else progress)
    check_labels(graphs, trainer.model.label_keys, data)
    if ckpt is not None:
        trainer.load_state(ckpt, out / "last.pt")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        trainer.write_split()
        atomic_write_text(json.dumps(to_dict(config), indent=1) + "\n", out / "config.json")
        n_params = sum(p.numel() for p in trainer.model.encoder.parameters())
        log.info("pretraining on %d structures (%d train / %d validation, %d skipped), encoder %d parameters, "
                 "tasks %s, %d process(es) on %s, from epoch %d to %d", len(graphs), len(trainer.train_set),
                 len(trainer.val_set), len(graphs.problems), n_params, ", ".join(trainer.task_names), d.world,
                 d.device, trainer.epoch, config.epochs)

    def log_epoch(epoch: int, row: dict) -> None:
        n = len(trainer.train_set) + len(trainer.val_set)
        accs = " ".join(f"{t}={row[f'val_{t}_acc']:.3f}" if f"val_{t}_mae" not in row else
                        f"{t}=MAE {row[f'val_{t}_mae']:.4g}" for t in trainer.task_names)
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val %s  (%.1f s, %.0f structures/s)",
                 epoch, config.epochs, row["train_loss"], row["val_loss"], accs, row["seconds"],
                 n / max(row["seconds"], 1e-9))

    row = trainer.fit(log_epoch)
    d.barrier()
    return row if d.main else {}
