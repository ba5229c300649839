"""``crysdistill probe`` and ``crysdistill krr``: is a teacher worth distilling, and the quick baseline.

``probe`` reports what a teacher's atom embeddings carry beyond the element and how well a linear
probe of a target does from them, next to an untrained twin, composition features and the
training mean. ``krr`` fits kernel ridge regression on averaged teacher embeddings (NEGNN's
descriptor baseline) in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from crysdistill.cli.common import add_data_args, data_of, report_problems, resolve_data


def _nan_to_none(obj):
    """JSON cannot hold NaN: replace it with ``null``."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``probe`` (also usable for an alias such as ``teacher probe``)."""
    p.add_argument("--teacher", default="default", help="teacher.pt, or 'default' for the shipped teacher")
    add_data_args(p)
    p.add_argument("--target", default=None, metavar="KEY",
                   help="label to probe linearly (omit for the embedding statistics only)")
    p.add_argument("--layers", default=None, metavar="LIST",
                   help="comma-separated layers to analyse and probe (0 = input embedding; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the untrained twin and the sampling")
    p.add_argument("--untrained", type=int, default=1, metavar="N",
                   help="untrained twins to compare with (seeds seed…seed+N-1; default 1, 0 = none)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of labelled structures held out (0.2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_probe)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="what a teacher's embeddings carry beyond the element (and a linear probe)")
    add_probe_args(p)

    k = sub.add_parser("krr", help="kernel ridge regression on averaged teacher embeddings (fast baseline)")
    k.add_argument("--teacher", default=None,
                   help="teacher.pt, or 'default' (the shipped teacher; default unless --features composition)")
    add_data_args(k)
    k.add_argument("--target", required=True, metavar="KEY", help="label to predict")
    k.add_argument("--layers", default="0,1,2", metavar="LIST",
                   help="comma-separated teacher layers averaged over atoms (default 0,1,2)")
    k.add_argument("--features", choices=("teacher", "untrained", "composition"), default="teacher",
                   help="teacher embeddings (default), those of an untrained twin, or composition features")
    k.add_argument("--kernel", choices=("rbf", "laplacian", "auto"), default="auto",
                   help="kernel; auto (default) chooses between both on the validation split")
    k.add_argument("--train-size", type=float, help="training structures (count or fraction; default: the rest)")
    k.add_argument("--val-size", type=float, help="validation structures (count or fraction; default 10%%)")
    k.add_argument("--test-size", type=float, help="test structures (count or fraction; default 10%%)")
    k.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    k.add_argument("-o", "--output", default=None, metavar="CSV", help="write test predictions (id, target, prediction)")
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.set_defaults(func=cmd_krr)

    h = sub.add_parser("head", help="the teacher + head reference: an MLP (or ridge) on a frozen teacher's "
                       "per-structure embeddings, on the splits 'train' makes")
    h.add_argument("--teacher", default=None,
                   help="any teacher: chgnet, sevennet, a shipped CrysGNN name or a teacher.pt")
    add_data_args(h)
    h.add_argument("--target", required=True, metavar="KEY", help="label to predict")
    h.add_argument("--features", choices=("teacher", "composition"), default="teacher",
                   help="the teacher's embeddings (default) or composition features (no teacher)")
    h.add_argument("--layers", default=None, metavar="LIST", help="teacher layers averaged over atoms (default: all)")
    h.add_argument("--train-size", type=float, help="training structures (count or fraction; default: the rest)")
    h.add_argument("--val-size", type=float, help="validation structures (count or fraction; default 10%%)")
    h.add_argument("--test-size", type=float, help="test structures (count or fraction; default 10%%)")
    h.add_argument("--seed", type=int, default=0, help="seed of the split and of the head (default 0)")
    h.add_argument("--split-seed", type=int, default=None, help="seed of the split (default: --seed)")
    h.add_argument("--student", default="cgcnn",
                   help="keep the structures this student can featurise, as 'train --student' does (default cgcnn)")
    h.add_argument("--target-transform", choices=("none", "log"), default="none",
                   help="fit log(target) for positive, heavy-tailed labels (MAEs stay in the target's units)")
    h.add_argument("--out", default=None, metavar="DIR", help="write summary.json and head.pt here")
    h.add_argument("-o", "--output", default=None, metavar="CSV", help="write test predictions (id, target, prediction)")
    h.add_argument("--threads", type=int, default=1, help="torch threads (0 = one per core; default 1)")
    h.add_argument("--json", action="store_true", help="print one JSON object")
    h.set_defaults(func=cmd_head)


def cmd_probe(args: argparse.Namespace) -> int:
    from crysdistill.teacher.probe import format_probe, parse_layers, probe_teacher, teacher_graphs

    t0 = time.perf_counter()
    layers = parse_layers(args.layers)
    from crysdistill.teachers.registry import load_teacher as load_any

    plugin = load_any(getattr(args, "ckpt", None) or args.teacher)
    if not hasattr(plugin, "teacher"):  # a foundation or third-party teacher: its own embeddings, its random twin
        from crysdistill.teacher.probe import probe_plugin

        res = probe_plugin(plugin, resolve_data(args.data), target=args.target, layers=layers,
                           cache_dir=args.cache_dir, seed=args.seed, test_fraction=args.test_fraction,
                           n_untrained=args.untrained, workers=args.workers, on_error=args.on_error, limit=args.limit,
                           source=resolve_data(args.data))
        res["seconds"] = time.perf_counter() - t0
        print(json.dumps(_nan_to_none(res), indent=1) if args.json else format_probe(res))
        return 0
    teacher = plugin.teacher
    graphs = teacher_graphs(teacher, resolve_data(args.data), cache_dir=args.cache_dir, workers=args.workers,
                            on_error=args.on_error, limit=args.limit)
    report_problems(graphs.problems)
    res = probe_teacher(teacher, graphs, target=args.target, layers=layers, cache_dir=args.cache_dir,
                        seed=args.seed, test_fraction=args.test_fraction, n_untrained=args.untrained,
                        source=resolve_data(args.data))
    res["seconds"] = time.perf_counter() - t0  # with reading the data and building graphs
    print(json.dumps(_nan_to_none(res), indent=1) if args.json else format_probe(res))
    return 0


def cmd_krr(args: argparse.Namespace) -> int:
    from crysdistill.teacher.checkpoint import Teacher
    from crysdistill.teacher.probe import parse_layers, teacher_graphs
    from crysdistill.train.krr import KERNELS, run_krr

    t0 = time.perf_counter()
    layers = parse_layers(args.layers)
    if args.teacher is None and args.features == "composition":
        # composition features need no teacher: graphs with the default settings give the atoms
        from crysdistill.data.graph import GraphSettings
        from crysdistill.teacher.encoder import CrysGNNEncoder

        teacher = Teacher(CrysGNNEncoder().eval(), GraphSettings(), "none", {}, "none")
    else:
        from crysdistill.teachers.registry import load_teacher as load_any

        plugin = load_any(args.teacher or "default")
        if not hasattr(plugin, "teacher"):  # a foundation teacher: features from its own embeddings
            if args.layers == "0,1,2":
                layers = None  # every layer, not NEGNN's first three
            res = run_krr(plugin, resolve_data(args.data), args.target, layers=layers, features=args.features,
                          train_size=args.train_size, val_size=args.val_size, test_size=args.test_size, seed=args.seed,
                          kernels=KERNELS if args.kernel == "auto" else (args.kernel,), output=args.output,
                          cache_dir=args.cache_dir, on_error=args.on_error, limit=args.limit,
                          source=resolve_data(args.data))
            return _print_krr(args, res, t0)
        teacher = plugin.teacher
    graphs = teacher_graphs(teacher, resolve_data(args.data), cache_dir=args.cache_dir, workers=args.workers,
                            on_error=args.on_error, limit=args.limit)
    report_problems(graphs.problems)
    kernels = KERNELS if args.kernel == "auto" else (args.kernel,)
    res = run_krr(teacher, graphs, args.target, layers=layers, features=args.features, train_size=args.train_size,
                  val_size=args.val_size, test_size=args.test_size, seed=args.seed, kernels=kernels,
                  output=args.output, cache_dir=args.cache_dir, source=resolve_data(args.data))
    return _print_krr(args, res, t0)


def _print_krr(args: argparse.Namespace, res, t0: float) -> int:
    from crysdistill.train.krr import format_krr

    res.seconds = time.perf_counter() - t0  # with reading the data and building graphs
    if args.json:
        print(json.dumps(_nan_to_none(res.to_dict()), indent=1))
    else:
        print(format_krr(res))
        if args.output:
            print(f"test predictions written to {args.output}")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    import torch

    from crysdistill.teacher.probe import parse_layers
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.head import format_head, run_head

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(student=args.student, targets=[args.target], teacher=args.teacher,
                      train_size=args.train_size, val_size=args.val_size, test_size=args.test_size, seed=args.seed,
                      split_seed=args.split_seed, on_error=args.on_error, cache_dir=args.cache_dir,
                      workers=args.workers, device="cpu", target_transform=args.target_transform)
    data = data_of(args, args.on_error)
    res = run_head(cfg, data, features=args.features, layers=parse_layers(args.layers),
                   output=args.output, out_dir=args.out)
    print(json.dumps(_nan_to_none(res.to_dict()), indent=1) if args.json else format_head(res))
    return 0
