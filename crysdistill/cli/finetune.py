"""``crysdistill finetune``: train a teacher end to end on labels (the accuracy ceiling; a teacher again)."""

from __future__ import annotations

import argparse

from crysdistill.cli.common import add_data_args, data_of, print_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a teacher (chgnet, sevennet) end to end with a property head; "
                       "the result predicts and is a teacher again (--teacher DIR/teacher.pt)",
                       description="Fine-tune a foundation teacher on labelled structures: its own network with a new "
                       "head on the per-structure mean of its layers, first fitted on the frozen teacher (a probe that keeps "
                       "the best of an L1 head and crysdistill head's MLPs on validation: epoch 0), then AdamW with a "
                       "smaller learning rate for the backbone. "
                       "Splits, seeds, selection on validation and the single test are those of 'crysdistill train' "
                       "with the same sizes and seeds.")
    p.add_argument("--teacher", default=None, help="a teacher that can be fine-tuned: chgnet (default), sevennet, "
                   "a variant (chgnet:0.2.0)")
    add_data_args(p)
    p.add_argument("--target", dest="targets", action="append", required=True, metavar="KEY",
                   help="label to predict (repeat for several)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (teacher.pt, last.pt, metrics.csv, …)")
    p.add_argument("--train-size", type=float, help="training structures (count or fraction; default: the rest)")
    p.add_argument("--val-size", type=float, help="validation structures (count or fraction; default 10%%)")
    p.add_argument("--test-size", type=float, help="test structures (count or fraction; default 10%%)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=None, help="structures per step (default 16)")
    p.add_argument("--lr-backbone", type=float, default=None, help="learning rate of the teacher's weights (1e-4)")
    p.add_argument("--lr-head", type=float, default=None, help="learning rate of the new head (1e-3)")
    p.add_argument("--freeze-layers", type=int, default=None, metavar="N", help="keep the first N layers frozen (0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("-c", "--config", default=None, metavar="YAML", help="a fine-tuning config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides, e.g. loss=mse target_transform=log split_seed=0 threads=1")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from crysdistill.config import load_config
    from crysdistill.train.finetune import FinetuneConfig, finetune

    flags = {"teacher": args.teacher, "targets": args.targets, "train_size": args.train_size,
             "val_size": args.val_size, "test_size": args.test_size, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr_backbone": args.lr_backbone, "lr_head": args.lr_head,
             "freeze_layers": args.freeze_layers, "seed": args.seed, "device": args.device,
             "cache_dir": args.cache_dir, "workers": args.workers,
             "on_error": args.on_error if args.on_error != "raise" else None}
    cfg = load_config(FinetuneConfig, args.config, args.overrides,
                      extra={k: v for k, v in flags.items() if v is not None})
    data = data_of(args, cfg.on_error)
    s = finetune(cfg, data, args.out, resume=args.resume)
    print_run(f"{s['teacher']} fine-tuned on {', '.join(s['targets'])}", s, f"{args.out}/teacher.pt")
    print(f"next: crysdistill predict --checkpoint {args.out}/teacher.pt --data … -o pred.csv, or use it as "
          f"--teacher {args.out}/teacher.pt")
    return 0
