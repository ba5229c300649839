#!/usr/bin/env python
"""Choose a pretraining recipe by the probe, not by guesswork.

Pretrains one small teacher per recipe (the same corpus subset, epochs and seed for all), scores
its pretext heads on the structures its pretraining held out (``crysdistill teacher eval --split
val``: space-group top-1/top-5, crystal system by nearest centroid), then probes each on labelled
sets the evidence benchmark does not use (``--no-probes`` skips this): how much of the last layer's
atom embeddings the element explains, how similar atom embeddings are (collapse), and ridge
probes of each target from the per-structure embeddings — the last layer (the one distilled by
default) and layers 0…L together (the multi-scale descriptor) — next to an untrained twin and a
composition baseline measured in the same run.

    python scripts/compare_recipes.py --limit 4000 --epochs 4 --out runs/recipes
    # the pretext-head ablation of docs/teacher.md (11,000 structures x 5 epochs)
    python scripts/compare_recipes.py --limit 11000 --epochs 5 --no-probes --out runs/ablation \
        --recipes "crysgnn,sg hidden,cs projection,both heads,angular,angular + both heads" \
        -O threads=1 -O loader_workers=0 -O val_fraction=0.1

A recipe is a list of ``key=value`` overrides of configs/pretrain.yaml (see RECIPES below, or
``--recipe name:key=value,key=value``); the named ones start from CrysGNN as published. Teachers
already in ``--out`` are reused, so the script can be stopped and rerun. Prints a Markdown table and writes ``results.json`` (the run behind docs/teacher.md: docs/recipes_results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def config_overrides(path: Path) -> list[str]:
    """A YAML config's leaves as ``key=value`` overrides (dotted keys, JSON values)."""
    from crysdistill.config import read_yaml

    def leaves(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={json.dumps(value)}"

    return list(leaves(read_yaml(path), ""))


#: CrysGNN as published (configs/crysgnn.yaml, read from there): the base every recipe below adds to.
CRYSGNN = config_overrides(Path(__file__).resolve().parents[1] / "configs" / "crysgnn.yaml")
RECIPES = {
    "crysgnn": CRYSGNN,
    "+masked_atom": [*CRYSGNN, "tasks.masked_atom.weight=0.25"],
    "+masked_edge": [*CRYSGNN, "tasks.masked_edge.weight=0.25"],
    "+perturbation": [*CRYSGNN, "tasks.perturbation.weight=0.25"],
    "+all three": [*CRYSGNN, "tasks.masked_atom.weight=0.25", "tasks.masked_edge.weight=0.25",
                   "tasks.perturbation.weight=0.25"],
    "sg hidden": [*CRYSGNN, "tasks.space_group.options.hidden=256"],
    "cs projection": [*CRYSGNN, "tasks.crystal_system.options.projection=64"],
    "both heads": [*CRYSGNN, "tasks.space_group.options.hidden=256", "tasks.crystal_system.options.projection=64"],
    "angular": [*CRYSGNN, "encoder.angular_orders=8"],
    "angular + both heads": [],  # the default config (the shipped default teacher's recipe)
}
PROBES = [  # (file, target): labelled sets that the evidence benchmark does not train or test on
    ("mp_eform_flla2015.jsonl.gz", "formation_energy_per_atom"),
    ("mp_elasticity_dejong2015.jsonl.gz", "log_kvrh"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "pretrain_unlabelled.jsonl.gz"), help="pretraining corpus")
    p.add_argument("--data-dir", default=str(SHARED), help="folder of the probe sets")
    p.add_argument("--limit", type=int, default=4000, help="pretrain on the first N structures of --data")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME:k=v,k=v", help="an extra recipe")
    p.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                   help="also probe an existing teacher (e.g. shipped=default)")
    p.add_argument("--untrained", type=int, default=3, help="untrained twins per probe")
    p.add_argument("--no-probes", action="store_true", help="only pretrain and score the pretext heads")
    p.add_argument("-O", "--override", action="append", default=[], metavar="key=value",
                   help="override for every recipe (e.g. threads=1)")
    p.add_argument("--out", default="runs/recipes")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from crysdistill.errors import CheckpointError
    from crysdistill.teacher.checkpoint import load_heads, load_split, load_teacher
    from crysdistill.teacher.data import stream_graphs
    from crysdistill.teacher.evaluate import evaluate_teacher, held_out_graphs
    from crysdistill.teacher.pretrain import load_pretrain_config, pretrain
    from crysdistill.teacher.probe import probe_teacher

    recipes = {name: RECIPES[name] for name in args.recipes.split(",") if name}
    for spec in args.recipe:
        name, _, kv = spec.partition(":")
        recipes[name] = [x for x in kv.split(",") if x]
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    existing = dict(spec.split("=", 1) for spec in args.teacher)
    corpus = {}  # graph-settings fingerprint → the featurised --data subset
    for name in existing:
        recipes[name] = None
    for name, overrides in recipes.items():
        run = out / name.replace(" ", "_").replace("+", "plus_")
        if overrides is not None and not (run / "teacher.pt").exists():
            cfg = load_pretrain_config(None, [*args.override, *overrides], extra={"epochs": args.epochs, "seed": args.seed})
            t0 = time.perf_counter()
            row = pretrain(cfg, args.data, run, limit=args.limit, progress=False)
            (run / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
            print(f"{name}: pretrained in {time.perf_counter() - t0:.0f} s, val loss {row['val_loss']:.4f}", flush=True)
        teacher = load_teacher(existing[name] if name in existing else run / "teacher.pt")
        last = teacher.encoder.config.layers
        wall = run / "wall_seconds.txt"
        entry = {"overrides": overrides, "fingerprint": teacher.fingerprint, "teacher": teacher.path,
                 "pretrain_seconds": float(wall.read_text()) if wall.exists() else None,
                 "pretext": teacher.meta.get("metrics", {}), "held_out": None, "probes": {}}
        try:
            split = load_split(teacher)
        except CheckpointError:
            split = None  # an existing teacher without its run folder: no held-out score
        if split is not None:
            key = json.dumps(teacher.graph_settings.to_dict(), sort_keys=True)
            if key not in corpus:
                corpus[key] = stream_graphs(args.data, teacher.graph_settings, limit=args.limit)
            res = evaluate_teacher(teacher, load_heads(teacher), held_out_graphs(corpus[key], split, args.data))
            entry["held_out"] = {k: res[k] for k in ("n_structures", "space_group_top1", "space_group_top5",
                                                     "crystal_system_accuracy")}
        for fname, target in [] if args.no_probes else PROBES:
            res = probe_teacher(teacher, os.path.join(args.data_dir, fname), target=target, seed=args.seed,
                                n_untrained=args.untrained)
            rows, per_layer = res["probe"]["rows"], res["probe"]["per_layer"]
            emb = res["embedding"]
            entry["probes"][target] = {
                "element_r2_last": emb["teacher"][-1]["element_r2"], "cosine_last": emb["teacher"][-1]["mean_cosine"],
                "untrained_element_r2_last": emb["untrained"][-1]["element_r2"],
                "mae_last": next(r["mae"] for r in per_layer["teacher"] if r["layer"] == last),
                "untrained_mae_last": next(r["mae"] for r in per_layer["untrained"] if r["layer"] == last),
                "mae_all": rows["teacher"]["mae"], "untrained_mae_all": [t["mae"] for t in res["probe"]["untrained_twins"]],
                "composition_mae": rows["composition"]["mae"], "n_labelled": res["probe"]["n_labelled"],
            }
        results[name] = entry
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def table(results: dict) -> str:
    targets = [t for _, t in PROBES if all(t in e["probes"] for e in results.values())]
    head = ["recipe", "pretrain s", "held out", "space group top-1", "top-5", "crystal system (centroid)"]
    for t in targets:
        head += [f"{t}: element R² (last)", "probe MAE last layer (untrained)", "probe MAE layers 0…L (untrained mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in results.items():
        h = e.get("held_out") or {}
        cells = [name, f"{e['pretrain_seconds']:.0f}" if e["pretrain_seconds"] else "—", str(h.get("n_structures", "—"))]
        cells += [f"{h[k]:.3f}" if h.get(k) is not None else "—"
                  for k in ("space_group_top1", "space_group_top5", "crystal_system_accuracy")]
        for t in targets:
            p = e["probes"][t]
            un = sum(p["untrained_mae_all"]) / len(p["untrained_mae_all"])
            cells += [f"{p['element_r2_last']:.3f} ({p['untrained_element_r2_last']:.3f})",
                      f"{p['mae_last']:.4f} ({p['untrained_mae_last']:.4f})", f"{p['mae_all']:.4f} ({un:.4f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    from crysdistill.errors import run_script

    run_script(main, "compare_recipes.py")
