"""``crysdistill distill``: distil a teacher into a student's encoder on an unlabelled corpus."""

from __future__ import annotations

import argparse

from crysdistill.cli.common import add_data_args, report_problems, resolve_data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a student's encoder to reproduce a teacher's atom embeddings on an "
                       "unlabelled corpus (then: train --init DIR/student.pt)",
                       description="Encoder distillation: no labels; the student learns to reproduce the frozen "
                       "teacher's atom embeddings (every layer by default) on every structure of the corpus. "
                       "The student it writes predicts without any teacher once fine-tuned with 'train --init'. "
                       "Data parallel under torchrun: torchrun --nproc_per_node N -m crysdistill distill …")
    p.add_argument("--student", default=None, help="student name (default cgcnn)")
    p.add_argument("--teacher", default=None, help="any teacher: sevennet (default), chgnet, a CrysGNN teacher, …")
    add_data_args(p)
    p.set_defaults(on_error="skip")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (student.pt, last.pt, metrics.csv, …)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("-c", "--config", default=None, metavar="YAML",
                   help="a student config (configs/cgcnn.yaml): its student and model sections are used")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides, e.g. model.width=64 teacher_layers=[0,5] val_fraction=0.05 threads=1")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> int:
    from crysdistill.config import load_config, read_yaml
    from crysdistill.distill.corpus import CorpusDistillConfig, distill_corpus

    base = {}
    if args.config:
        y = read_yaml(args.config)
        base = {k: y[k] for k in ("student", "model") if k in y}
    flags = {"student": args.student, "teacher": args.teacher, "epochs": args.epochs, "batch_size": args.batch_size,
             "lr": args.lr, "seed": args.seed, "device": args.device, "cache_dir": args.cache_dir,
             "workers": args.workers, "on_error": args.on_error}
    cfg = load_config(CorpusDistillConfig, None, args.overrides, extra={k: v for k, v in flags.items() if v is not None},
                      base=base)
    s = distill_corpus(cfg, resolve_data(args.data), args.out, resume=args.resume, limit=args.limit)
    if not s:  # another process than rank 0 of a torchrun: rank 0 reports
        return 0
    report_problems(s.pop("problems"))
    ev = " ".join(f"L{k} {v:.3f}" for k, v in s["val_explained_variance"].items())
    print(f"{s['student']} distilled from {s['teacher']} on {s['n_train']} structures: held-out explained variance "
          f"{ev} (epoch {s['best_epoch']}; {s['seconds']:.0f} s) -> {args.out}/student.pt")
    print(f"next: crysdistill train --student {s['student']} --init {args.out}/student.pt --data … --target …")
    return 0
