"""``crysdistill pretrain``, ``crysdistill teacher info|eval`` and ``crysdistill embed``."""

from __future__ import annotations

import argparse
import json
import sys

from crysdistill.cli.common import add_data_args, resolve_data
from crysdistill.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a CrysGNN teacher on unlabelled crystals (torchrun for data parallel)")
    add_data_args(p)
    p.set_defaults(on_error="skip")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (teacher.pt, last.pt, metrics.csv, …)")
    p.add_argument("-c", "--config", default=None, metavar="YAML", help="pretraining config (e.g. configs/pretrain.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (overrides the config)")
    p.add_argument("--seed", type=int, default=None, help="seed of split, initial weights and sampling")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=0.001")
    p.set_defaults(func=cmd_pretrain)

    t = sub.add_parser("teacher", help="list, describe or evaluate teachers")
    tsub = t.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", help="installed teachers: distribution, version, layers × widths, training data")
    ls.add_argument("--json", action="store_true", help="print one JSON list")
    ls.add_argument("--no-load", action="store_true",
                    help="only read the plugins' metadata (fast; no layers or training data)")
    ls.set_defaults(func=cmd_list)
    info = tsub.add_parser("info", help="print what a teacher holds (any --teacher value)")
    info.add_argument("teacher", help="chgnet, sevennet[:variant], a shipped CrysGNN name (default, crysgnn, "
                      "mp-eform) or a teacher.pt")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)
    ev = tsub.add_parser("eval", help="pretext accuracies (space group, crystal system, connectivity, features) on a dataset")
    ev.add_argument("teacher", help="teacher.pt (with its teacher.heads.pt), or 'default'")
    add_data_args(ev, required=False)
    ev.set_defaults(on_error="skip")
    ev.add_argument("--split", choices=("val",), default=None,
                    help="evaluate on the structures the teacher's pretraining held out (from the run's split.json; "
                         "--data defaults to the corpus the run recorded)")
    ev.add_argument("--heads", default=None, metavar="PATH", help="heads file (default: next to the teacher)")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--threads", type=int, default=1, help="torch threads (0 = one per core; default 1)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("overrides", nargs="*", metavar="graph.KEY=VALUE",
                    help="graph settings of the data, if not the teacher's (refused when they differ)")
    ev.set_defaults(func=cmd_eval)

    from crysdistill.cli.analysis import add_probe_args

    pr = tsub.add_parser("probe", help="what the teacher's embeddings carry beyond the element, and a linear "
                         "probe of a target (same as 'crysdistill probe')")
    pr.add_argument("ckpt", metavar="TEACHER", help="teacher.pt, or 'default'")
    add_probe_args(pr)

    e = sub.add_parser("embed", help="per-structure and per-atom teacher embeddings of a dataset → .npz")
    e.add_argument("--teacher", default="default",
                   help="any teacher: chgnet, sevennet, a shipped CrysGNN name or a teacher.pt (default 'default')")
    add_data_args(e)
    e.add_argument("-o", "--output", required=True, metavar="NPZ", help="output file (.npz)")
    e.add_argument("--layers", default=None, metavar="LIST",
                   help="comma-separated layers to concatenate (0 = input embedding; default: the last)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--threads", type=int, default=1, help="torch threads (0 = one per core; default 1)")
    e.add_argument("overrides", nargs="*", metavar="graph.KEY=VALUE",
                   help="graph settings of the data, if not the teacher's (refused when they differ)")
    e.set_defaults(func=cmd_embed)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from crysdistill.teacher.pretrain import load_pretrain_config, pretrain

    if args.resume and (args.config or args.overrides or args.seed is not None):
        raise UserError("--resume continues the run with its stored config; only --epochs may change "
                        "(drop -c, --seed and key=value overrides)")
    config = None if args.resume else load_pretrain_config(
        args.config, args.overrides, {"seed": args.seed} if args.seed is not None else None)
    row = pretrain(config, resolve_data(args.data), args.out, resume=args.resume, epochs=args.epochs,
                   cache_dir=args.cache_dir,
                   workers=args.workers, on_error=args.on_error, limit=args.limit, build_progress=_log_records)
    if row:
        print(f"teacher written to {args.out}/teacher.pt (last epoch {row['epoch']}: validation loss {row['val_loss']:.4f})")
    return 0


def _log_records(done: int) -> None:
    import logging

    logging.getLogger("crysdistill").info("graphs: %d records read and cached", done)


def _graph_settings(teacher, overrides: list[str]):
    from crysdistill.config import parse_overrides
    from crysdistill.data.graph import GraphSettings
    from crysdistill.errors import ConfigError
    from crysdistill.teacher.checkpoint import check_compatible

    data = parse_overrides(overrides)
    unknown = set(data) - {"graph"}
    if unknown:
        raise ConfigError(f"only graph.KEY=VALUE overrides are accepted here, not {sorted(unknown)[0]!r}")
    if not data:
        return teacher.graph_settings
    settings = GraphSettings.from_dict({**teacher.graph_settings.to_dict(), **data["graph"]})
    check_compatible(teacher, settings, source="data")
    return settings


def _graphs(args: argparse.Namespace, settings):
    import torch

    from crysdistill.cli.common import report_problems
    from crysdistill.teacher.data import stream_graphs

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    graphs = stream_graphs(resolve_data(args.data), settings, args.cache_dir, workers=args.workers,
                           on_error=args.on_error, limit=args.limit, progress=None if getattr(args, "json", False) else _log_records)
    report_problems(graphs.problems)
    return graphs


def cmd_list(args: argparse.Namespace) -> int:
    from crysdistill.teachers.registry import get_teacher_class, list_teachers

    rows = []
    for info in list_teachers(try_load=not args.no_load):
        row = {"name": info.name, "distribution": info.distribution, "version": info.version, "value": info.value,
               "error": info.error}
        if info.error is None and not args.no_load:
            cls = get_teacher_class(info.name)
            row["variants"] = cls.variants()
            row["default_variant"] = cls.default_variant
            row["package"] = f"{cls.package} {cls.package_version()}"
            if not cls.default_variant:  # a plugin that only loads files (fine-tuned teachers)
                row.update(layers="per file", trained_on="takes a file: " + (cls.__doc__ or "").strip().splitlines()[0])
                rows.append(row)
                continue
            try:
                t = cls(None)
                row.update(layers=f"{len(t.layer_widths)} × {'/'.join(map(str, sorted(set(t.layer_widths))))}",
                           trained_on=t.training.dataset, labels=list(t.training.labels), fingerprint=t.fingerprint)
            except Exception as exc:  # a teacher that fails to load is one warning, not a crash
                row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.no_load:
        print(f"{'name':10s} {'distribution':24s} entry point")
        for r in rows:
            print(f"{r['name']:10s} {r['distribution'] + ' ' + r['version']:24s} {r['value']}")
        return 0
    print(f"{'name':10s} {'distribution':24s} {'package':18s} {'layers':9s} {'status':7s} trained on")
    for r in rows:
        status = "ok" if r["error"] is None else "BROKEN"
        print(f"{r['name']:10s} {r['distribution'] + ' ' + r['version']:24s} {r.get('package', '?'):18s} "
              f"{r.get('layers', '?'):9s} {status:7s} {r.get('trained_on', '')}")
        if r.get("variants"):
            print(f"{'':10s} variants: {', '.join(r['variants'])} (default {r['default_variant']})"
                  + (f"; labels: {', '.join(r['labels'])}" if r.get("labels") else ""))
    for r in rows:
        if r["error"] is not None:
            print(f"warning: teacher {r['name']!r} ({r['value']}) does not load: {r['error']}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from crysdistill.teacher.checkpoint import heads_path
    from crysdistill.teachers.registry import load_teacher as load_any

    plugin = load_any(args.teacher)
    if not hasattr(plugin, "teacher"):  # a foundation teacher: its own description
        desc = plugin.describe()
        if args.json:
            print(json.dumps(desc, indent=1))
            return 0
        n_params = sum(p.numel() for p in plugin.module.parameters())
        print(f"teacher      {plugin.spec} ({plugin.package} {plugin.package_version()}, checkpoint {plugin.variant})")
        print(f"fingerprint  {plugin.fingerprint}")
        print(f"parameters   {n_params:,}")
        print("layers       " + ", ".join(f"{k} {n} ({w})" for k, (n, w) in
                                          enumerate(zip(plugin.layer_names, plugin.layer_widths))))
        tr = plugin.training
        print(f"trained on   {tr.dataset}; labels: {', '.join(tr.labels)}")
        print(f"leaks into   {', '.join(tr.leaked_targets) or 'nothing declared'}")
        print("settings     " + ", ".join(f"{k} {v}" for k, v in plugin.settings.items()))
        print(f"variants     {', '.join(plugin.variants())}")
        return 0
    teacher = plugin.teacher
    meta = teacher.meta
    n_params = sum(p.numel() for p in teacher.encoder.parameters())
    heads = heads_path(teacher.path)
    desc = {
        "path": teacher.path,
        "fingerprint": teacher.fingerprint,
        "encoder": meta.get("encoder_config"),
        "parameters": n_params,
        "graph_settings": teacher.graph_settings.to_dict(),
        "featurizer_fingerprint": meta.get("featurizer_fingerprint"),
        "tasks": meta.get("tasks"),
        "validation_metrics": meta.get("metrics"),
        "epoch": meta.get("epoch"),
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "data": meta.get("data"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "heads": str(heads) if heads.is_file() else None,
        "versions": meta.get("versions"),
    }
    if args.json:
        print(json.dumps(desc, indent=1))
        return 0
    enc = desc["encoder"] or {}
    print(f"teacher      {teacher.path}")
    print(f"fingerprint  {teacher.fingerprint}")
    print(f"encoder      CrysGNN {enc.get('layers')} × {enc.get('width')} ({n_params:,} parameters; "
          f"{enc.get('atom_features')} atom features, {enc.get('edge_features')} edge features"
          + (f", bond orientations q_1…q_{enc['angular_orders']}" if enc.get("angular_orders") else "") + ")")
    g = desc["graph_settings"]
    print(f"graph        cutoff {g['cutoff']} Å, ≤{g['max_neighbors']} neighbours, Gaussian step {g['gaussian_step']} Å, "
          f"atom features '{g['atom_features']}', symprec {g['symprec']} (featuriser {desc['featurizer_fingerprint']})")
    tasks = desc["tasks"] or {}
    print("tasks        " + (", ".join(
        f"{n} (weight {s.get('weight')}" + "".join(f", {k} {v}" for k, v in (s.get("options") or {}).items()) + ")"
        for n, s in tasks.items()) or "none recorded"))
    if desc["epoch"] is not None:
        print(f"trained      {desc['epoch']} epoch(s) on {desc['n_train']} structures ({desc['n_val']} held out) "
              f"from {desc['data']} (data {desc['data_fingerprint']})")
    metrics = desc["validation_metrics"] or {}
    if metrics:
        print("validation   " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))))
    print(f"heads        {desc['heads'] or 'none (teacher eval unavailable)'}")
    versions = desc["versions"] or {}
    print("versions     " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from crysdistill.teacher.checkpoint import load_heads, load_split, load_teacher
    from crysdistill.teacher.evaluate import evaluate_teacher, held_out_graphs

    teacher = load_teacher(args.teacher)
    heads = load_heads(teacher, args.heads)
    split = load_split(teacher) if args.split else None
    recorded = split is not None and args.data is None
    if recorded:
        args.data = split.get("data")
    if not args.data:
        raise UserError("teacher eval needs --data (or --split val to use the teacher's held-out structures)"
                        if split is None else f"{split['path']}: records no corpus; pass it with --data")
    try:
        graphs = _graphs(args, _graph_settings(teacher, args.overrides))
    except UserError as exc:
        if not recorded:
            raise
        raise UserError(f"{exc} (the corpus recorded in {split['path']}; pass --data to read it from elsewhere)") from None
    if split is not None:
        graphs = held_out_graphs(graphs, split, args.data)
        if len(graphs) < len(split["val_keys"]):
            print(f"warning: {args.data} holds {len(graphs)} of the {len(split['val_keys'])} held-out structures of "
                  f"{split['path']}; evaluating those", file=sys.stderr)
    res = evaluate_teacher(teacher, heads, graphs, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['n_structures']} structures ({res['n_unknown_symmetry']} without a space group)")
    rows = [("space group top-1", "space_group_top1"), ("space group top-5", "space_group_top5"),
            ("crystal system (nearest centroid)", "crystal_system_accuracy"),
            ("connectivity", "connectivity_accuracy"), ("feature reconstruction", "feature_accuracy")]
    rows += [(k[:-len("_accuracy")].replace("_", " "), k) for k in res
             if k.endswith("_accuracy") and not k.startswith("baseline_") and k not in dict(rows).values()]
    maes = [(k[:-len("_mae")].replace("_", " "), k) for k in res if k.endswith("_mae") and not k.startswith("baseline_")]
    for title, baseline, table in (("accuracy", "majority", rows), ("mean absolute error", "constant", maes)):
        if table:
            print(f"{title:<36}{'teacher':>10}{baseline:>10}")
        for label, key in table:
            v, b = res.get(key), res.get(f"baseline_{key}")
            print(f"{label:<36}{'—' if v is None else f'{v:.4f}':>10}{'—' if b is None else f'{b:.4f}':>10}")
    sys.stdout.flush()
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from crysdistill.teacher.evaluate import embed

    layers = None
    if args.layers:
        try:
            layers = [int(v) for v in args.layers.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--layers must be comma-separated integers (e.g. 0,1,2), not {args.layers!r}") from None
    from crysdistill.teachers.registry import load_teacher as load_any

    plugin = load_any(args.teacher)
    if not hasattr(plugin, "teacher"):
        return _embed_records(args, plugin, layers)
    teacher = plugin.teacher
    # embedding needs no symmetry labels: the graphs then share the cache with CGCNN-family students
    settings = replace(_graph_settings(teacher, args.overrides), symmetry=False)
    graphs = _graphs(args, settings)
    arrays = embed(teacher, graphs, layers, batch_size=args.batch_size)
    out = args.output if args.output.endswith(".npz") else args.output + ".npz"
    np.savez(out, teacher_fingerprint=np.asarray(teacher.fingerprint), **arrays)
    print(f"{out}: {len(arrays['ids'])} structures, {arrays['node'].shape[0]} atoms, "
          f"{arrays['graph'].shape[1]} features (layers {','.join(map(str, arrays['layers']))})")
    return 0


def _embed_records(args: argparse.Namespace, teacher, layers) -> int:
    """``embed`` with any teacher plugin: structures streamed in chunks, each embedded once (cached)."""
    import numpy as np
    import torch

    from crysdistill.cli.common import report_problems
    from crysdistill.distill.cache import check_records, embed_records
    from crysdistill.teacher.data import iter_records
    from crysdistill.utils import build_progress

    if args.overrides:
        raise UserError(f"graph.KEY=VALUE overrides are for CrysGNN teachers; {teacher.spec} builds its own graphs")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from crysdistill.distill.cache import normalize_layers

    ks = normalize_layers(layers, teacher.n_layers)
    ids, graphs, nodes, sizes, problems = [], [], [], [], []
    chunk: list = []

    def flush():
        ok, bad = check_records(teacher, chunk, on_error=args.on_error)
        problems.extend(bad)
        emb = embed_records(teacher, ok, ks, cache_dir=args.cache_dir, batch_size=args.batch_size,
                            progress=build_progress(f"{teacher.spec} embeddings"), workers=args.workers)
        for r, key in zip(ok, emb.keys):
            a = emb.store.get(key)
            ids.append(r.id)
            nodes.append(np.array(a["node"], dtype=np.float32))
            graphs.append(np.array(a["graph"], dtype=np.float32))
            sizes.append(a["node"].shape[0])
        emb.store.close()
        chunk.clear()

    for item in iter_records(resolve_data(args.data), on_error=args.on_error, limit=args.limit, problems=problems):
        chunk.append(item)
        if len(chunk) >= (8192 if args.workers > 1 else 2048):  # one worker pool per chunk
            flush()
    if chunk or not ids:
        flush()
    report_problems(problems)
    if not ids:
        raise UserError(f"{args.data}: no structure could be embedded by {teacher.spec}")
    layer_list = list(ks)
    out = args.output if args.output.endswith(".npz") else args.output + ".npz"
    np.savez(out, teacher_fingerprint=np.asarray(teacher.fingerprint), teacher=np.asarray(teacher.spec),
             ids=np.asarray(ids), graph=np.stack(graphs), node=np.concatenate(nodes),
             offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), layers=np.asarray(layer_list))
    print(f"{out}: {len(ids)} structures, {sum(sizes)} atoms, {graphs[0].shape[0]} features "
          f"(layers {','.join(map(str, layer_list))} of {teacher.spec})")
    return 0
