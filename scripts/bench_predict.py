#!/usr/bin/env python
"""Prediction speed: the standalone student, the injected student (teacher included) and the teacher + head, on the same structures.

Each model predicts the same new structures through ``crysdistill.train.predict.predict`` (what
``crysdistill predict`` runs), from reading the file to writing the CSV, with an empty cache
(new structures: graphs are built and the teacher embeds every structure) on one torch thread:

* ``student``: CGCNN on its own (a student fine-tuned from a pre-distilled encoder, ``--init
  cgcnn-chgnet``, has exactly this cost: it needs no teacher);
* ``injected``: CGCNN reading every layer of the teacher's atom embeddings, so the teacher runs first;
* ``head``: the teacher + head reference of ``crysdistill head`` (teacher embeddings, then an MLP);
* ``fine-tuned``: the teacher fine-tuned by ``crysdistill finetune`` (``--finetune``; its own
  network with new weights, then its head).

The models are trained here for one epoch on the bundled sample (speed does not depend on how
well they are trained) unless checkpoints are given. The ratio column is structures/s over the
standalone student's, measured in the same run.

    python scripts/bench_predict.py --teachers chgnet,sevennet --data sample:elasticity
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sample:elasticity", help="structures to predict (default: the elasticity sample)")
    p.add_argument("--target", default="log_kvrh", help="label the models are trained on")
    p.add_argument("--n", type=int, default=None, help="predict only the first N structures")
    p.add_argument("--teachers", default="chgnet,sevennet")
    p.add_argument("--finetune", default="", help="also fine-tune these teachers (one epoch) and time their prediction")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="time each model this many times, report the fastest")
    return p.parse_args(argv)


def _train(tmp: Path, data, target: str, teacher: str | None, n_layers: int | None) -> Path:
    from crysdistill.config import load_config
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import train_student

    extra = {"student": "cgcnn", "targets": [target], "epochs": 1, "threads": 1, "workers": 1,
             "cache_dir": str(tmp / "train-cache"), "val_size": 0.1, "test_size": 0.1}
    if teacher:
        extra.update(teacher=teacher, distill={"node_weight": 0.0, "inject_layers": list(range(n_layers + 1))})
    out = tmp / f"student-{teacher or 'plain'}"
    train_student(load_config(TrainConfig, Path(__file__).resolve().parents[1] / "configs" / "cgcnn.yaml",
                              extra=extra), data, out)
    return out / "best.pt"


def _head(tmp: Path, data, target: str, teacher: str) -> Path:
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.head import run_head

    out = tmp / f"head-{teacher}"
    run_head(TrainConfig(student="cgcnn", targets=[target], teacher=teacher, val_size=0.1, test_size=0.1,
                         cache_dir=str(tmp / "train-cache"), workers=1), data, out_dir=out)
    return out / "head.pt"


def _finetune(tmp: Path, data, target: str, teacher: str) -> Path:
    from crysdistill.train.finetune import FinetuneConfig, finetune

    out = tmp / f"finetune-{teacher}"
    finetune(FinetuneConfig(teacher=teacher, targets=[target], val_size=0.1, test_size=0.1, epochs=1, probe_steps=20,
                            cache_dir=str(tmp / "train-cache"), workers=1, device="cpu"), data, out)
    return out / "teacher.pt"


def main(argv=None) -> int:
    import torch

    from crysdistill.cli.common import resolve_data
    from crysdistill.data.readers import read_dataset
    from crysdistill.teachers.registry import load_teacher
    from crysdistill.train.predict import predict

    warnings.filterwarnings("ignore")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = read_dataset(resolve_data(args.data), limit=args.n)
    n_sites = sum(len(r.structure) for r in data.records) / len(data.records)
    print(f"{len(data.records)} structures from {args.data} (mean {n_sites:.1f} sites), {args.threads} thread(s), "
          f"empty cache each time; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        models = {"student (cgcnn)": _train(tmp, data, args.target, None, None)}
        for name in args.teachers.split(","):
            n_layers = load_teacher(name).n_layers
            models[f"injected ({name} + cgcnn)"] = _train(tmp, data, args.target, name, n_layers)
            models[f"head ({name} + MLP)"] = _head(tmp, data, args.target, name)
        for name in [t for t in args.finetune.split(",") if t]:
            models[f"fine-tuned ({name} + head)"] = _finetune(tmp, data, args.target, name)
        rates = {}
        print(f"{'model':28s} {'structures/s':>13s} {'vs student':>11s} {'MAE':>8s}", flush=True)
        for label, ckpt in models.items():
            best = float("inf")
            for k in range(args.repeats):
                cache = tmp / f"cache-{len(rates)}-{k}"
                t0 = time.perf_counter()
                res = predict(ckpt, data, tmp / "pred.csv", cache_dir=cache, workers=1, device="cpu")
                best = min(best, time.perf_counter() - t0)
            rates[label] = res["n_predicted"] / best
            mae = res["mae"].get(args.target, float("nan"))
            print(f"{label:28s} {rates[label]:13.1f} {rates[label] / rates['student (cgcnn)']:11.3f} {mae:8.4f}",
                  flush=True)
    print("(MAE on structures the models were trained on after one epoch: a sanity check, not an accuracy figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
