#!/usr/bin/env python
"""How much of the teacher's atom embedding can a student reach without being distilled?

For trained student runs (``best.pt`` of ``crysdistill train``, vanilla and distilled, same
split), fit a linear map (least squares with a bias, on the training structures' atoms) from the
student's atom embeddings to the teacher's L2-normalised atom embeddings, and report on the
validation structures' atoms the CrysGNN distillation distance ``mean ‖n(P s) − n(t)‖²``
(0 = identical directions, 2 = orthogonal) and the R² of the fit. An element-only map (one
vector per element, the mean teacher embedding of that element in the training atoms) is the
floor: what the element alone gives.

If a vanilla student's embeddings already map onto the teacher's about as well as a distilled
student's, the distillation term has little to teach it, whatever its weight.

    python scripts/distill_gap.py --teacher default \\
        runs/benchmark-v2/runs/cgcnn/formation_energy_per_atom/n1000/{vanilla,distill-w0.1}/seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of crysdistill train (best.pt, splits.json)")
    p.add_argument("--teacher", default="default")
    p.add_argument("--layers", default="-1", help="teacher layers (default: the last)")
    p.add_argument("--max-structures", type=int, default=1000, help="per split")
    return p.parse_args(argv)


def student_atoms(adapter, graphs, batch_size: int = 128):
    """Atom embeddings ``(N, D)`` with the (structure, site) of each row."""
    import torch

    from crysdistill.train.trainer import collate_indices

    emb, where = [], []
    with torch.no_grad():
        for s in range(0, len(graphs), batch_size):
            idx = list(range(s, min(s + batch_size, len(graphs))))
            out = adapter(collate_indices(adapter, graphs, idx))
            emb.append(out.node_embedding.double().numpy())
            where.append(np.stack([np.asarray(idx)[out.node_batch.numpy()], out.site_index.numpy()], 1))
    return np.concatenate(emb), np.concatenate(where)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (the L2 normalisation of the distillation loss)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def distance(pred: np.ndarray, target: np.ndarray) -> float:
    """``mean ‖n(pred) − target‖²`` for unit-length ``target`` rows."""
    return float(np.mean(np.sum((unit(pred) - target) ** 2, axis=1)))


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def main(argv=None) -> int:
    args = parse_args(argv)
    from crysdistill.data.cache import build_graphs
    from crysdistill.data.readers import read_dataset
    from crysdistill.distill.cache import teacher_embeddings
    from crysdistill.errors import UserError
    from crysdistill.students.checkpoint import load_student
    from crysdistill.teacher.checkpoint import load_teacher

    for run in args.runs:
        for name in ("best.pt", "splits.json"):
            if not (Path(run) / name).is_file():
                raise UserError(f"{run}: no {name}; pass run folders of 'crysdistill train'")
    teacher = load_teacher(args.teacher)
    layers = [int(x) for x in args.layers.split(",")]
    splits = json.loads((Path(args.runs[0]) / "splits.json").read_text())
    ds = read_dataset(splits["data"])
    by_id = {r.id: r for r in ds.records}
    part = {name: [by_id[i] for i in splits[name][:args.max_structures]] for name in ("train", "val")}
    tgt = {}
    for name, recs in part.items():
        tg = build_graphs(recs, teacher.featurizer())
        emb = teacher_embeddings(teacher, tg, layers)
        nodes = emb.node_list(list(range(len(tg))))
        tgt[name] = ([n.numpy().astype(np.float64) for n in nodes],
                     [np.asarray(tg[i]["z"]) for i in range(len(tg))])
    print(f"teacher {teacher.fingerprint} layers {layers}; {len(part['train'])} training and {len(part['val'])} "
          f"validation structures of {splits['data']}")

    def teacher_rows(name, where):
        return unit(np.stack([tgt[name][0][s][k] for s, k in where]))

    # element-only floor
    z_tr = np.concatenate(tgt["train"][1])
    t_tr = unit(np.concatenate(tgt["train"][0]))
    means = {z: t_tr[z_tr == z].mean(0) for z in np.unique(z_tr)}
    z_va = np.concatenate(tgt["val"][1])
    t_va = unit(np.concatenate(tgt["val"][0]))
    glob = t_tr.mean(0)
    p_va = np.stack([means.get(z, glob) for z in z_va])
    print(f"{'element only':40s} distance {distance(p_va, t_va):.4f}  R² {r2(p_va, t_va):.3f}")
    for run in args.runs:
        adapter, _ = load_student(Path(run) / "best.pt")
        feats = {}
        for name, recs in part.items():
            sg = build_graphs(recs, adapter.featurizer())
            x, where = student_atoms(adapter, sg)
            feats[name] = (np.hstack([x, np.ones((len(x), 1))]), teacher_rows(name, where))
        w, *_ = np.linalg.lstsq(*feats["train"], rcond=None)
        pred = feats["val"][0] @ w
        label = f"{adapter.name} {Path(run).parent.name}/{Path(run).name}"
        print(f"{label:40s} distance {distance(pred, feats['val'][1]):.4f}  R² {r2(pred, feats['val'][1]):.3f}")
    return 0


if __name__ == "__main__":
    from crysdistill.errors import run_script

    run_script(main, "distill_gap.py")
