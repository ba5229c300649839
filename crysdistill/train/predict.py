"""Predict with a trained student checkpoint on new structures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from crysdistill.data.cache import build_graphs
from crysdistill.data.readers import Dataset, read_dataset
from crysdistill.errors import CheckpointError
from crysdistill.students.checkpoint import load_student
from crysdistill.train.splits import Normalizer
from crysdistill.train.trainer import predict_indices, resolve_device


def predict(checkpoint: str | os.PathLike, data: str, output: str | os.PathLike, student: str | None = None,
            on_error: str = "raise", cache_dir=None, workers: int = 1, batch_size: int = 256,
            device: str = "auto", limit: int | None = None) -> dict:
    """Write ``id, <target>_prediction…`` (and ``<target>_target`` where labels exist) to ``output``.

    Args:
        checkpoint: ``best.pt`` (or ``last.pt``) of a training run.
        data: structures to predict (any format :func:`read_dataset` reads, or a read :class:`Dataset`).
        output: CSV path.
        student: if given, the checkpoint must belong to this student.

    Returns:
        ``{"n_predicted", "n_skipped", "mae"}`` (MAE only where labels are present).
    """
    from crysdistill.train.finetune import FINETUNED_KIND, predict_finetuned
    from crysdistill.train.head import HEAD_KIND, predict_head
    from crysdistill.utils import load_checkpoint

    kind = load_checkpoint(checkpoint).get("kind")
    if kind == HEAD_KIND:  # a teacher + head reference (crysdistill head --out)
        return predict_head(checkpoint, data, output, on_error=on_error, cache_dir=cache_dir, workers=workers,
                            device=device, limit=limit)
    if kind == FINETUNED_KIND:  # a fine-tuned teacher (crysdistill finetune --out)
        return predict_finetuned(checkpoint, data, output, on_error=on_error, device=device, limit=limit)
    adapter, ckpt = load_student(checkpoint)
    if student is not None and adapter.name != student:
        raise CheckpointError(f"{checkpoint}: is a {adapter.name!r} checkpoint, not {student!r}; "
                              f"pass --student {adapter.name} or another checkpoint")
    if "normalizer" not in ckpt or "targets" not in ckpt:
        raise CheckpointError(f"{checkpoint}: student checkpoint without targets/normaliser; use best.pt of a "
                              "'crysdistill train' run")
    featurizer = adapter.featurizer()
    if ckpt.get("featurizer_fingerprint") and ckpt["featurizer_fingerprint"] != featurizer.fingerprint():
        raise CheckpointError(f"{checkpoint}: made with another featuriser than this installation builds for "
                              f"{adapter.name!r}; retrain with this version")
    targets = list(ckpt["targets"])
    norm = Normalizer.from_dict(ckpt["normalizer"])
    ds = data if isinstance(data, Dataset) else read_dataset(data, on_error=on_error, limit=limit)
    graphs = build_graphs(ds.records, featurizer, cache_dir=cache_dir, workers=workers, on_error=on_error)
    injected = None
    skipped = ds.problems + graphs.problems
    if ckpt.get("inject"):  # the student reads the teacher's atom embeddings as extra inputs
        from crysdistill.distill.cache import check_records, embed_records
        from crysdistill.teachers.registry import load_teacher

        inj = ckpt["inject"]
        teacher = load_teacher(inj["teacher"], device=resolve_device(device))
        if teacher.fingerprint != inj["teacher_fingerprint"]:
            raise CheckpointError(f"{checkpoint}: was trained with teacher {inj['teacher_fingerprint']} injected, but "
                                  f"{inj['teacher']} is now teacher {teacher.fingerprint} ({teacher.package} "
                                  f"{teacher.package_version()}); restore that teacher (file or package version)")
        by_id = {r.id: r for r in ds.records}
        ok, bad = check_records(teacher, [by_id[i] for i in graphs.ids], on_error=on_error)
        if bad:
            skipped += bad
            keep = {r.id for r in ok}
            graphs = graphs.subset([k for k, rid in enumerate(graphs.ids) if rid in keep])
        injected = embed_records(teacher, ok, inj["layers"], cache_dir=cache_dir)
    dev = resolve_device(device)
    adapter.to(dev)
    pred = predict_indices(adapter, graphs, list(range(len(graphs))), batch_size, dev, injected)
    pred = norm.decode(pred)
    res = write_predictions(output, graphs.ids, targets, pred, {r.id: r.labels for r in ds.records})
    return {"n_predicted": len(graphs), "n_skipped": len(skipped), "problems": skipped, "mae": res}


def write_predictions(output: str | os.PathLike, ids, targets, pred: np.ndarray, labels: dict[str, dict]
                      ) -> dict[str, float]:
    """Write ``id, <target>_target, <target>_prediction…`` (targets where labels exist); return the MAE per labelled target."""
    has = {t: any(labels[i].get(t) is not None for i in ids) for t in targets}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    errs = {t: [] for t in targets}
    with open(output, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id"] + [c for t in targets for c in ((f"{t}_target",) if has[t] else ()) + (f"{t}_prediction",)])
        for k, rid in enumerate(ids):
            row = [rid]
            for j, t in enumerate(targets):
                if has[t]:
                    v = labels[rid].get(t)
                    row.append("" if v is None else v)
                    if v is not None:
                        errs[t].append(abs(pred[k, j] - v))
                row.append(float(pred[k, j]))
            w.writerow(row)
    return {t: float(np.mean(e)) for t, e in errs.items() if e}
