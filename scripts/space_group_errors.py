#!/usr/bin/env python
"""Where does a teacher's space-group classification go wrong, and what could do better?

On the structures the teacher held out while pretraining (its validation split, read from the
``split.json`` recorded beside the teacher, and checked against the recorded data fingerprint),
report:

* top-1 / top-5 accuracy against the space-group labels at the teacher's tolerance and at
  looser ones: if the errors were structures distorted below the graph's resolution (Gaussian
  width 0.2 Å), the teacher would match the looser labels better;
* the share of wrong top-1 guesses that at least fall in the right crystal system;
* classifiers fitted on the teacher's own training split: random forests on the composition alone (which
  the graph encodes through its node features); on the composition plus the shape of the
  Niggli-reduced cell (lengths relative to the longest, cosines of the angles, sites per cell),
  which a CGCNN graph of 12 nearest-neighbour distances does not carry directly; and on the
  teacher's own frozen graph embedding; and a linear and a one-hidden-layer head refitted on that
  frozen embedding. They tell whether the embedding holds more about the space group than the
  linear head trained with it reads out.

    python scripts/space_group_errors.py --teacher default

Prints a Markdown table and writes ``--json`` (the run behind docs/teacher.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TOLERANCES = (0.01, 0.05, 0.1, 0.2)
N_ELEMENTS = 103


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="default")
    p.add_argument("--data", default=None, help="the teacher's pretraining corpus (default: the path it records)")
    p.add_argument("--trees", type=int, default=50, help="trees per random-forest baseline")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def composition(structure) -> np.ndarray:
    """Element fractions, indexed by atomic number 1…103."""
    comp = np.zeros(N_ELEMENTS)
    for el, frac in structure.composition.fractional_composition.items():
        comp[el.Z - 1] += frac
    return comp


def cell_shape(structure) -> np.ndarray:
    """The Niggli-reduced cell: lengths over the longest, sorted cosines of the angles, log of sites."""
    lat = structure.lattice.get_niggli_reduced_lattice()
    abc = np.sort(np.asarray(lat.abc))
    cos = np.sort(np.cos(np.radians(np.asarray(lat.angles))))
    return np.concatenate([abc / abc[-1], cos, [np.log(len(structure))]])


def fit_head(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, hidden: int, seed: int,
             epochs: int = 40) -> np.ndarray:
    """Top-5 space groups ``(n_va, 5)`` from a linear (``hidden=0``) or one-hidden-layer head
    trained on ``x_tr`` with cross-entropy (AdamW, lr 1e-3, batch 256, fixed epochs: nothing is
    selected on the held-out structures)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    xt = torch.tensor((x_tr - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y_tr - 1, dtype=torch.long)
    d = xt.shape[1]
    head = nn.Linear(d, 230) if not hidden else nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 230))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(256):
            opt.zero_grad()
            nn.functional.cross_entropy(head(xt[idx]), yt[idx]).backward()
            opt.step()
    with torch.no_grad():
        logits = head(torch.tensor((x_va - mean) / std, dtype=torch.float32))
    return logits.topk(5, dim=1).indices.numpy() + 1


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from sklearn.ensemble import RandomForestClassifier

    from crysdistill.data.cache import build_graphs
    from crysdistill.data.graph import CrystalGraphFeaturizer
    from crysdistill.data.readers import read_dataset
    from crysdistill.data.symmetry import crystal_system_index, space_group_number
    from crysdistill.errors import UserError
    from crysdistill.teacher.checkpoint import load_heads, load_split, load_teacher
    from crysdistill.teacher.data import data_fingerprint
    from crysdistill.teacher.evaluate import _batches, held_out_graphs
    from crysdistill.teacher.pretext.base import build_task

    teacher = load_teacher(args.teacher)
    heads = load_heads(teacher)
    if "space_group" not in heads["tasks"]:
        raise UserError(f"{teacher.path}: the teacher has no space-group head")
    meta = teacher.meta
    if not all(k in meta for k in ("n_train", "n_val", "data_fingerprint")):
        raise UserError(f"{teacher.path}: the checkpoint does not record its pretraining data; pass a teacher "
                        "written by 'crysdistill pretrain'")
    split = load_split(teacher)
    data = args.data or meta.get("data")
    if not data or not Path(data).exists():
        raise UserError(f"{data}: the teacher's pretraining corpus is not there; pass it with --data")
    settings = teacher.graph_settings
    t0 = time.perf_counter()
    # the corpus as the teacher read it: pretrain --limit reads the first N records
    ds = read_dataset(data, limit=int(meta["n_train"]) + int(meta["n_val"]))
    graphs = build_graphs(ds.records, CrystalGraphFeaturizer(settings))
    if data_fingerprint(graphs) != meta["data_fingerprint"]:
        raise UserError(f"{data}: not the data teacher {teacher.fingerprint} was pretrained on (fingerprint "
                        "differs); pass that corpus with --data")
    held = held_out_graphs(graphs, split, data)
    held_keys = set(held.keys)
    train_idx = np.asarray([i for i, k in enumerate(graphs.keys) if k not in held_keys])
    by_id = {r.id: r for r in ds.records}
    print(f"{data}: {len(train_idx)} training / {len(held)} held-out structures "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    task = build_task("space_group", teacher.encoder.width, settings, heads["tasks"]["space_group"])
    task.load_state_dict(heads["heads"]["space_group"])
    task.eval()

    def graph_embedding(part) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([teacher.encoder(b).graph.numpy()
                                   for b in _batches(part, settings, 256, torch.device("cpu"))])

    def spg_labels(part) -> np.ndarray:
        return np.array([int(part[i]["spg"][0]) for i in range(len(part))])

    emb_held, label = graph_embedding(held), spg_labels(held)
    with torch.no_grad():
        top5 = (task.head(torch.from_numpy(emb_held)).topk(5, dim=1).indices + 1).numpy()
    known = label >= 1
    structures = [by_id[i].structure for i in held.ids]
    at = {t: np.array([space_group_number(s.lattice.matrix, s.frac_coords, np.asarray(s.atomic_numbers),
                                          t, settings.angle_tolerance) for s in structures]) for t in TOLERANCES}
    system = np.vectorize(crystal_system_index)
    pred1 = top5[:, 0]
    wrong = known & (pred1 != label)
    res = {"teacher": teacher.fingerprint, "n_heldout": int(known.sum()), "n_train": int(len(train_idx)),
           "label_tolerance": settings.symprec, "tolerances": {}}
    for t in TOLERANCES:
        res["tolerances"][str(t)] = {
            "labels_changed": float((at[t] != label)[known].mean()),
            "top1": float((pred1 == at[t])[known].mean()),
            "top5": float((top5 == at[t][:, None]).any(1)[known].mean()),
        }
    res["teacher_top1_crystal_system"] = float((system(pred1) == system(label))[known].mean())
    res["wrong_top1_in_right_crystal_system"] = float((system(pred1) == system(label))[wrong].mean())
    counts = np.bincount(label[known], minlength=231)
    res["majority_top1"] = float((label[known] == counts.argmax()).mean())

    train_graphs = graphs.subset(train_idx.tolist())
    y_train = spg_labels(train_graphs)
    keep = y_train >= 1
    train_structures = [by_id[i].structure for i, k in zip(train_graphs.ids, keep) if k]
    res["baselines"] = {}
    held_known = [s for s, k in zip(structures, known) if k]
    comp = [np.stack([composition(s) for s in ss]) for ss in (train_structures, held_known)]
    cell = [np.stack([cell_shape(s) for s in ss]) for ss in (train_structures, held_known)]
    inputs = {"composition": comp, "composition + cell shape": [np.hstack(pair) for pair in zip(comp, cell)],
              "embedding": [graph_embedding(train_graphs)[keep], emb_held[known]]}
    y_tr, y = y_train[keep], label[known]
    runs = [("random forest, composition", "forest", "composition"),
            ("random forest, composition + cell shape", "forest", "composition + cell shape"),
            ("random forest, teacher graph embedding", "forest", "embedding"),
            ("linear head refitted on the frozen graph embedding", "linear", "embedding"),
            ("MLP head (1 hidden layer of 256) on the frozen graph embedding", "mlp", "embedding")]
    for name, kind, key in runs:
        t1 = time.perf_counter()
        x_tr, x_va = inputs[key]
        if kind == "forest":
            forest = RandomForestClassifier(n_estimators=args.trees, min_samples_leaf=3, random_state=args.seed,
                                            n_jobs=1)
            forest.fit(x_tr, y_tr)
            order = forest.classes_[np.argsort(-forest.predict_proba(x_va), axis=1)[:, :5]]
        else:
            order = fit_head(x_tr, y_tr, x_va, hidden=256 if kind == "mlp" else 0, seed=args.seed)
        res["baselines"][name] = {
            "top1": float((order[:, 0] == y).mean()),
            "top5": float((order == y[:, None]).any(1).mean()),
            "crystal_system": float((system(order[:, 0]) == system(y)).mean()),
            "seconds": round(time.perf_counter() - t1, 1),
        }
        print(f"{name}: {res['baselines'][name]}", flush=True)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def table(res: dict) -> str:
    lines = [f"Held-out structures: {res['n_heldout']}; labels at symprec {res['label_tolerance']} Å; "
             f"majority class top-1 {res['majority_top1']:.3f}.", "",
             "| space-group labels at symprec (Å) | labels changed | teacher top-1 | teacher top-5 |",
             "|---|---|---|---|"]
    for t, r in res["tolerances"].items():
        lines.append(f"| {t} | {r['labels_changed']:.3f} | {r['top1']:.3f} | {r['top5']:.3f} |")
    lines += ["", "| classifier | space group top-1 | top-5 | crystal system of the top-1 guess |", "|---|---|---|---|",
              f"| teacher (space-group head) | {res['tolerances'][str(res['label_tolerance'])]['top1']:.3f} | "
              f"{res['tolerances'][str(res['label_tolerance'])]['top5']:.3f} | {res['teacher_top1_crystal_system']:.3f} |"]
    for name, b in res["baselines"].items():
        lines.append(f"| {name} | {b['top1']:.3f} | {b['top5']:.3f} | {b['crystal_system']:.3f} |")
    lines += ["", f"Wrong teacher top-1 guesses in the right crystal system: {res['wrong_top1_in_right_crystal_system']:.3f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    from crysdistill.errors import run_script

    run_script(main, "space_group_errors.py")
