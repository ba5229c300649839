"""``crysdistill data inspect``: what is in a dataset, and what is wrong with it."""

from __future__ import annotations

from collections import Counter

import numpy as np

from crysdistill.data.cache import build_graphs
from crysdistill.data.features import atom_feature_table
from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.data.readers import read_dataset
from crysdistill.data.symmetry import CRYSTAL_SYSTEMS


def inspect_dataset(path: str, on_error: str = "skip", settings: GraphSettings | None = None,
                    cache_dir=None, workers: int = 1, limit: int | None = None, progress=None) -> dict:
    """Read ``path``, build (or load cached) crystal graphs, and summarise.

    Returns:
        A JSON-serialisable dict with ``n_structures``, ``elements``, ``elements_without_features``,
        ``sites``, ``space_groups``, ``crystal_systems``, ``labels``, ``graphs`` and ``problems``.
    """
    settings = settings or GraphSettings()
    ds = read_dataset(path, on_error=on_error, limit=limit)
    _, known = atom_feature_table(settings.atom_features)
    elements: Counter = Counter()
    unknown_el: set[str] = set()
    for r in ds.records:
        for el in {s.symbol for s in r.structure.species}:
            elements[el] += 1
    for r in ds.records:
        for sp in r.structure.species:
            if sp.Z >= len(known) or not known[sp.Z]:
                unknown_el.add(sp.symbol)
    graphs = build_graphs(ds.records, CrystalGraphFeaturizer(settings), cache_dir=cache_dir, workers=workers,
                          on_error=on_error, progress=progress)
    sites = np.array([len(r.structure) for r in ds.records])
    spg: Counter = Counter()
    cs: Counter = Counter()
    n_edges = 0
    n_atoms = 0
    for i in range(len(graphs)):
        g = graphs[i]
        s = int(g["spg"][0])
        spg["unknown" if s < 1 else str(s)] += 1
        c = int(g["crystal_system"][0])
        cs["unknown" if c < 0 else CRYSTAL_SYSTEMS[c]] += 1
        n_edges += g["edge_index"].shape[1]
        n_atoms += g["z"].shape[0]
    labels = {}
    for key in ds.label_keys():
        vals = [r.labels.get(key) for r in ds.records]
        present = np.array([v for v in vals if v is not None], dtype=float)
        labels[key] = {
            "count": int(present.size),
            "missing": int(len(vals) - present.size),
            **({"mean": float(present.mean()), "std": float(present.std()), "min": float(present.min()),
                "max": float(present.max()), "skewness": skewness(present),
                "heavy_tail": heavy_tail(present)} if present.size else {}),
        }
    problems = [{"record": p.record, "reason": p.reason} for p in ds.problems + graphs.problems]
    return {
        "source": ds.source,
        "n_structures": len(ds.records),
        "n_graphs": len(graphs),
        "elements": dict(sorted(elements.items(), key=lambda kv: (-kv[1], kv[0]))),
        "elements_without_features": sorted(unknown_el),
        "sites": {"min": int(sites.min()), "mean": float(sites.mean()), "median": float(np.median(sites)),
                  "max": int(sites.max()), "total": int(sites.sum())},
        "space_groups": dict(spg.most_common()),
        "crystal_systems": {k: cs[k] for k in (*CRYSTAL_SYSTEMS, "unknown") if cs[k]},
        "symmetry": {"symprec": settings.symprec, "angle_tolerance": settings.angle_tolerance,
                     "unknown": int(spg.get("unknown", 0))},
        "labels": labels,
        "graphs": {"settings": settings.to_dict(), "mean_neighbors": n_edges / max(n_atoms, 1),
                   "built_now": graphs.n_built, "cached": len(graphs) - graphs.n_built,
                   "cache": str(graphs.store.path)},
        "problems": problems,
    }


def skewness(x: np.ndarray) -> float:
    """Sample skewness (0 for a symmetric distribution)."""
    if x.size < 3 or x.std() == 0:
        return 0.0
    return float(np.mean(((x - x.mean()) / x.std()) ** 3))


def heavy_tail(x: np.ndarray) -> str | None:
    """A note when a few extreme labels would dominate a squared-error loss, with what to do.

    Flagged when the skewness exceeds 2 and the largest label is more than 10 times the median's
    distance from the minimum; the advice depends on whether every label is positive.
    """
    if x.size < 20 or skewness(x) <= 2:
        return None
    spread = np.median(x) - x.min()
    if spread > 0 and (x.max() - x.min()) < 10 * spread:
        return None
    if (x > 0).all():
        return (f"heavy right tail (skewness {skewness(x):.1f}, log skewness {skewness(np.log(x)):.1f}): "
                "train with target_transform=log (and loss=l1 or huber)")
    return f"heavy right tail (skewness {skewness(x):.1f}): train with loss=l1 or loss=huber"


def format_report(rep: dict, max_rows: int = 10) -> str:
    """Human-readable text of :func:`inspect_dataset`'s result."""
    lines = [f"dataset      {rep['source']}",
             f"structures   {rep['n_structures']} read, {rep['n_graphs']} with graphs, {len(rep['problems'])} problems"]
    s = rep["sites"]
    lines.append(f"sites        min {s['min']}  mean {s['mean']:.1f}  median {s['median']:.0f}  max {s['max']}")
    els = rep["elements"]
    top = ", ".join(f"{k} {v}" for k, v in list(els.items())[:15])
    lines.append(f"elements     {len(els)} ({top}{', …' if len(els) > 15 else ''})")
    if rep["elements_without_features"]:
        lines.append(f"no features  {', '.join(rep['elements_without_features'])}")
    g = rep["graphs"]
    lines.append(f"graphs       {g['settings']['cutoff']} Å, ≤{g['settings']['max_neighbors']} neighbours, "
                 f"mean {g['mean_neighbors']:.2f} per atom; built {g['built_now']}, from cache {g['cached']}")
    lines.append(f"cache        {g['cache']}")
    sym = rep["symmetry"]
    lines.append("crystal sys  " + ", ".join(f"{k} {v}" for k, v in rep["crystal_systems"].items())
                 + f"   (spglib symprec {sym['symprec']}, unknown {sym['unknown']})")
    sg = list(rep["space_groups"].items())
    lines.append(f"space groups {len(sg)} distinct; most common: " + ", ".join(f"{k} ({v})" for k, v in sg[:8]))
    if rep["labels"]:
        lines.append("labels")
        lines.append(f"  {'key':28s} {'count':>6s} {'missing':>7s} {'mean':>10s} {'std':>10s} {'min':>10s} {'max':>10s}")
        for k, v in rep["labels"].items():
            if v["count"]:
                lines.append(f"  {k:28s} {v['count']:6d} {v['missing']:7d} {v['mean']:10.4g} {v['std']:10.4g} "
                             f"{v['min']:10.4g} {v['max']:10.4g}")
                if v.get("heavy_tail"):
                    lines.append(f"  {'':28s} note: {v['heavy_tail']}")
            else:
                lines.append(f"  {k:28s} {0:6d} {v['missing']:7d}")
    else:
        lines.append("labels       none")
    if rep["problems"]:
        lines.append("problems")
        for p in rep["problems"][:max_rows]:
            lines.append(f"  {p['record']}: {p['reason']}")
        if len(rep["problems"]) > max_rows:
            lines.append(f"  … {len(rep['problems']) - max_rows} more (use --json for all)")
    return "\n".join(lines)
