"""``crysdistill students list``, ``crysdistill train``, ``crysdistill predict``."""

from __future__ import annotations

import argparse
import json
import sys

from crysdistill.cli.common import add_data_args, data_of, print_run, report_problems, resolve_data


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("students", help="installed student models")
    ssub = st.add_subparsers(dest="students_command", metavar="ACTION", required=True)
    p = ssub.add_parser("list", help="registered students, their distributions and whether they load")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train a student, vanilla or distilled from a teacher",
                       description="Train a student on labelled structures. Without --teacher: vanilla; "
                       "with --teacher: property loss plus distillation of the teacher's atom embeddings.")
    p.add_argument("--student", help="student name (see 'crysdistill students list'); default cgcnn")
    add_data_args(p)
    p.add_argument("--target", action="append", dest="targets", metavar="KEY",
                   help="label to predict (repeat for several)")
    p.add_argument("--teacher", help="any teacher: chgnet, sevennet[:variant], a shipped CrysGNN name (default, "
                   "crysgnn, mp-eform) or a teacher.pt; omit for vanilla")
    p.add_argument("--init", help="start from a distilled encoder: DIR/student.pt of 'crysdistill distill' or a "
                   "shipped one (cgcnn-sevennet, cgcnn-chgnet; 'students list' shows them)")
    p.add_argument("--pseudo-teacher", metavar="TEACHER",
                   help="teacher-labelled corpus: this teacher + a head fitted on the training split labels "
                        "--pseudo-data, and the student trains on those labels too (pseudo.weight, default 1)")
    p.add_argument("--pseudo-data", metavar="PATH", help="unlabelled corpus for --pseudo-teacher")
    p.add_argument("--train-size", type=float, help="training structures (count or fraction; default: the rest)")
    p.add_argument("--val-size", type=float, help="validation structures (count or fraction; default 10%%)")
    p.add_argument("--test-size", type=float, help="test structures (count or fraction; default 10%%)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("-c", "--config", metavar="YAML", help="config file (e.g. configs/cgcnn.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.001")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict with a trained student (best.pt) or a teacher + head (head.pt)")
    p.add_argument("--checkpoint", required=True, help="best.pt of a training run, or head.pt of crysdistill head --out")
    add_data_args(p)
    p.add_argument("-o", "--output", required=True, help="CSV to write")
    p.add_argument("--student", help="refuse a checkpoint of another student")
    p.set_defaults(func=cmd_predict)


def cmd_list(args: argparse.Namespace) -> int:
    from crysdistill.students.registry import list_students

    infos = list_students(try_load=True)
    if args.json:
        print(json.dumps({"students": [vars(i) for i in infos], "pre_distilled": _shipped_students()}, indent=1))
        return 0
    print(f"{'name':16s} {'distribution':28s} {'version':10s} status")
    for i in infos:
        status = "ok" if i.error is None else "BROKEN"
        print(f"{i.name:16s} {i.distribution:28s} {i.version:10s} {status}")
    for i in infos:
        if i.error is not None:
            print(f"warning: student {i.name!r} ({i.value}) does not load: {i.error}", file=sys.stderr)
    shipped = _shipped_students()
    if shipped:
        print("\npre-distilled encoders (train --init NAME):")
        print(f"{'name':15s} {'student':8s} {'teacher':9s} {'layers':12s} {'corpus':38s} explained variance per layer")
        for r in shipped:
            print(f"{r['name']:15s} {r['student']:8s} {r['teacher']:9s} {r['layers']:12s} {r['corpus']:38s} "
                  f"{r['explained_variance']}")
    return 0


def _shipped_students() -> list[dict]:
    """The pre-distilled students shipped inside crysdistill, described from their checkpoints."""
    from pathlib import Path

    from crysdistill.distill.corpus import bundled_students
    from crysdistill.utils import load_checkpoint

    rows = []
    for name, path in bundled_students().items():
        ckpt = load_checkpoint(path)
        d = ckpt.get("distillation") or {}
        ev = d.get("val_explained_variance") or {}
        rows.append({"name": name, "student": ckpt["student"]["name"], "teacher": d.get("teacher", "?"),
                     "teacher_fingerprint": d.get("teacher_fingerprint"),
                     "layers": ",".join(map(str, d.get("teacher_layers", []))),
                     "corpus": f"{d.get('n_train', '?')} of {Path(d.get('corpus', '?')).name}",
                     "corpus_fingerprint": d.get("corpus_fingerprint"),
                     "explained_variance": " ".join(f"{float(v):.2f}" for v in ev.values()), "path": str(path)})
    return rows


def cmd_train(args: argparse.Namespace) -> int:
    from crysdistill.config import load_config
    from crysdistill.train.config import TrainConfig
    from crysdistill.train.trainer import train_student

    flags = {
        "student": args.student, "targets": args.targets, "teacher": args.teacher, "init": args.init,
        "train_size": args.train_size, "val_size": args.val_size, "test_size": args.test_size,
        "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
        "on_error": args.on_error if args.on_error != "raise" else None, "cache_dir": args.cache_dir,
        "workers": args.workers,
    }
    extra = {k: v for k, v in flags.items() if v is not None}
    if args.lr is not None:
        extra["optim"] = {"lr": args.lr}
    pseudo = {k: v for k, v in (("teacher", args.pseudo_teacher),
                                ("data", args.pseudo_data and resolve_data(args.pseudo_data))) if v}
    if pseudo:
        extra["pseudo"] = pseudo
    cfg = load_config(TrainConfig, args.config, args.overrides, extra=extra)
    data = data_of(args, cfg.on_error)
    summary = train_student(cfg, data, args.out, resume=args.resume)
    mode = "vanilla"
    inject = summary["inject_layers"]
    if summary["teacher"] and cfg.distill.inject_layers and not inject:
        mode = f"vanilla (the safeguard chose it over {summary['teacher']} on validation)"
    elif summary["teacher"]:
        parts = []
        if summary["distill_weight"] or not inject:
            parts.append(f"distilled from {summary['teacher']} (weight {summary['distill_weight']:g})")
        if inject:
            parts.append(f"with {summary['teacher']}'s layers {','.join(map(str, inject))} as input")
        mode = ", ".join(parts)
    if summary.get("init"):
        d = summary.get("init_distillation") or {}
        start = f"from {summary['init']}" + (f" (distilled from {d['teacher']})" if d.get("teacher") else "")
        mode = start if mode == "vanilla" else f"{mode}, {start}"
    if summary.get("pseudo"):
        ps = summary["pseudo"]
        by = "its own head" if ps.get("head") == "own (fine-tuned)" else "head"
        what = f"on {ps['n_labelled']} structures labelled by {ps['teacher']} + {by} (weight {ps['weight']:g})"
        mode = what if mode == "vanilla" else f"{mode}, {what}"
    if summary.get("corpus"):
        c = summary["corpus"]
        mode += f", still matching {c['teacher']} on {c['n_structures']} corpus structures (weight {c['weight']:g})"
    print_run(f"{summary['student']} {mode}", summary, args.out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from crysdistill.train.predict import predict

    res = predict(args.checkpoint, resolve_data(args.data), args.output, student=args.student,
                  on_error=args.on_error, cache_dir=args.cache_dir, workers=args.workers, limit=args.limit)
    report_problems(res["problems"])
    mae = "".join(f", MAE {t} {v:.4g}" for t, v in res["mae"].items())
    print(f"predicted {res['n_predicted']} structure(s){mae} -> {args.output}")
    return 0
