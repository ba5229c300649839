"""What a teacher knows: pretext accuracies on any dataset, with baselines, and its embeddings.

Crystal systems are classified by the nearest of 7 class centroids of L2-normalised graph
embeddings, computed on (part of) the training split and stored with the heads: this measures the
contrastive embedding itself, without a trained classifier. Majority-class baselines use label
frequencies of the same training structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from crysdistill.data.batch import collate, label_attribute
from crysdistill.data.cache import GraphSet
from crysdistill.data.graph import GraphSettings
from crysdistill.data.symmetry import CRYSTAL_SYSTEMS
from crysdistill.errors import UserError
from crysdistill.teacher.checkpoint import Teacher
from crysdistill.teacher.data import GraphDataset
from crysdistill.teacher.encoder import CrysGNNEncoder
from crysdistill.teacher.pretext.base import PretextTask, build_task, task_label_keys
from crysdistill.teacher.pretext.connectivity import ConnectivityReconstruction
from crysdistill.teacher.pretext.space_group import N_SPACE_GROUPS

N_SYSTEMS = len(CRYSTAL_SYSTEMS)


def _batches(graphs: GraphSet, settings: GraphSettings, batch_size: int, device: torch.device,
             label_keys: Sequence[str] = ()):
    loader = DataLoader(GraphDataset(graphs, label_keys), batch_size=batch_size, shuffle=False,
                        collate_fn=lambda items: collate(items, settings))
    for batch in loader:
        yield batch.to(device) if device.type != "cpu" else batch


def training_statistics(encoder: CrysGNNEncoder, graphs: GraphSet, settings: GraphSettings,
                        device: torch.device, batch_size: int = 128,
                        connectivity: ConnectivityReconstruction | None = None) -> dict[str, torch.Tensor]:
    """Crystal-system centroids and label frequencies of training structures (stored with the heads).

    Args:
        encoder: the trained encoder (run in evaluation mode, restored to its mode afterwards).
        graphs: training structures.
        settings: their graph settings.
        device: where to run.
        batch_size: structures per batch.
        connectivity: the connectivity task, to count its pair classes (for a majority baseline).

    Returns:
        ``centroids`` ``(7, D)`` unit vectors (zero for an absent system), ``system_counts`` ``(7,)``,
        ``space_group_counts`` ``(230,)``, ``feature_frequency`` ``(F,)`` share of atoms with each
        bit set, and ``connectivity_counts`` ``(max_count + 1,)`` when ``connectivity`` is given.
    """
    was_training = encoder.training
    encoder.eval()
    width = encoder.width
    sums = torch.zeros(N_SYSTEMS, width, dtype=torch.float64)
    systems = torch.zeros(N_SYSTEMS, dtype=torch.float64)
    groups = torch.zeros(N_SPACE_GROUPS, dtype=torch.float64)
    bits = torch.zeros(settings.atom_feature_dim, dtype=torch.float64)
    n_atoms = 0
    pair_counts = torch.zeros(connectivity.max_count + 1, dtype=torch.float64) if connectivity else None
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for batch in _batches(graphs, settings, batch_size, device):
            z = F.normalize(encoder(batch).graph, dim=-1).double().cpu()
            cs = batch.crystal_system.view(-1).cpu()
            known = cs >= 0
            sums.index_add_(0, cs[known], z[known])
            systems += torch.bincount(cs[known], minlength=N_SYSTEMS).double()
            spg = batch.spg.view(-1).cpu()
            groups += torch.bincount(spg[spg >= 1] - 1, minlength=N_SPACE_GROUPS).double()
            bits += batch.x.double().sum(dim=0).cpu()
            n_atoms += int(batch.num_nodes)
            if connectivity is not None:
                _, labels = connectivity.pairs_and_labels(batch)
                pair_counts += torch.bincount(labels.cpu(), minlength=connectivity.max_count + 1).double()
    encoder.train(was_training)
    out = {
        "centroids": F.normalize(sums, dim=-1).float(),
        "system_counts": systems,
        "space_group_counts": groups,
        "feature_frequency": bits / max(n_atoms, 1),
    }
    if pair_counts is not None:
        out["connectivity_counts"] = pair_counts
    return out


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def held_out_graphs(graphs: GraphSet, split: dict, data: str) -> GraphSet:
    """The graphs whose cache keys are the held-out (``val_keys``) structures of a pretraining split.

    Args:
        graphs: a featurised dataset (normally the run's corpus).
        split: from :func:`crysdistill.teacher.checkpoint.load_split`.
        data: the dataset's name, for the error.

    Raises:
        UserError: ``graphs`` holds none of them. Fewer than all is allowed: compare the result's
            length with ``len(split["val_keys"])``.
    """
    wanted = set(split["val_keys"])
    picked = [i for i, k in enumerate(graphs.keys) if k in wanted]
    if not picked:
        raise UserError(f"{data}: holds none of the {len(wanted)} structures held out in {split['path']}; "
                        f"pass the corpus the teacher was pretrained on ({split.get('data')})")
    return graphs.subset(picked)


def evaluate_teacher(teacher: Teacher, heads: dict, graphs: GraphSet, device: torch.device | None = None,
                     batch_size: int = 128) -> dict:
    """Pretext accuracies of a teacher and its heads on ``graphs``, with majority baselines.

    Args:
        teacher: loaded teacher.
        heads: loaded heads file (:func:`crysdistill.teacher.checkpoint.load_heads`).
        graphs: structures featurised with the teacher's graph settings (symmetry labels included).
        device: where to run (default: CUDA when available).
        batch_size: structures per batch.

    Returns:
        ``n_structures``, ``n_unknown_symmetry``, ``space_group_top1``, ``space_group_top5``,
        ``crystal_system_accuracy``, ``connectivity_accuracy``, ``feature_accuracy`` (``None``
        where the teacher has no such head), ``{task}_accuracy`` for any other task (``{task}_mae``
        for regression tasks), and ``baseline_…`` majority-class accuracies for each (for a
        regression task, the MAE of the best constant, the labels' median).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = teacher.graph_settings
    if not settings.symmetry:
        raise UserError("teacher eval needs symmetry labels but the teacher's graphs were built without them")
    encoder = teacher.encoder.to(device).eval()
    tasks: dict[str, PretextTask] = {}
    for name, spec in heads["tasks"].items():
        task = build_task(name, encoder.width, settings, spec)
        task.load_state_dict(heads["heads"][name])
        tasks[name] = task.to(device).eval()
    stats = heads["train_stats"]
    centroids = stats["centroids"].to(device)
    sums: dict[str, float] = {}

    def add(key: str, value) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)

    spg_train = stats["space_group_counts"]
    spg_major1 = int(spg_train.argmax()) + 1
    spg_major5 = (spg_train.topk(5).indices + 1).tolist()
    cs_major = int(stats["system_counts"].argmax())
    bit_major = (stats["feature_frequency"] > 0.5).double()
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)  # the same sampled negative pairs on every call
        label_keys = task_label_keys(tasks.values())
        labels: dict[str, list[torch.Tensor]] = {k: [] for k in label_keys}
        for batch in _batches(graphs, settings, batch_size, device, label_keys):
            out = encoder(batch)
            add("n", batch.num_graphs)
            for k in label_keys:
                labels[k].append(getattr(batch, label_attribute(k)).view(-1).cpu())
            spg = batch.spg.view(-1).cpu()
            cs = batch.crystal_system.view(-1).cpu()
            add("unknown", (spg < 1).sum())
            add("spg_known", (spg >= 1).sum())
            add("base_spg1", (spg == spg_major1).sum())
            add("base_spg5", torch.isin(spg, torch.tensor(spg_major5)).sum())
            known = cs >= 0
            add("cs_known", known.sum())
            add("base_cs", (cs == cs_major).sum())
            nearest = (F.normalize(out.graph, dim=-1) @ centroids.T).argmax(dim=1).cpu()
            add("cs_correct", (nearest[known] == cs[known]).sum())
            ones = batch.x.double().sum(dim=0).cpu()
            add("base_bits", (bit_major * ones + (1 - bit_major) * (batch.num_nodes - ones)).sum())
            for name, task in tasks.items():
                r = task(batch, out, encoder)
                for k, v in r.counts.items():
                    add(f"{name}/{k}", v)
    res: dict = {"n_structures": int(sums.get("n", 0)), "n_unknown_symmetry": int(sums.get("unknown", 0))}
    res["space_group_top1"] = _ratio(sums.get("space_group/correct", 0), sums.get("space_group/total", 0)) \
        if "space_group" in tasks else None
    res["space_group_top5"] = _ratio(sums.get("space_group/correct5", 0), sums.get("space_group/total", 0)) \
        if "space_group" in tasks else None
    res["crystal_system_accuracy"] = _ratio(sums.get("cs_correct", 0), sums.get("cs_known", 0))
    res["connectivity_accuracy"] = _ratio(sums.get("connectivity/correct", 0), sums.get("connectivity/total", 0)) \
        if "connectivity" in tasks else None
    res["feature_accuracy"] = _ratio(sums.get("node_features/correct", 0), sums.get("node_features/total", 0)) \
        if "node_features" in tasks else None
    for name, task in tasks.items():
        if name in ("space_group", "connectivity", "node_features", "crystal_system"):
            continue
        if f"{name}/abs_error" in sums:  # a regression task; its baseline is the best constant
            res[f"{name}_mae"] = _ratio(sums[f"{name}/abs_error"], sums.get(f"{name}/total", 0))
            y = torch.cat(labels[task.label_keys[0]]) if task.label_keys else torch.zeros(0)
            y = y[~torch.isnan(y)].double()
            res[f"baseline_{name}_mae"] = float((y - y.median()).abs().mean()) if len(y) else None
        else:
            res[f"{name}_accuracy"] = _ratio(sums.get(f"{name}/correct", 0), sums.get(f"{name}/total", 0))
    res["baseline_space_group_top1"] = _ratio(sums.get("base_spg1", 0), sums.get("spg_known", 0))
    res["baseline_space_group_top5"] = _ratio(sums.get("base_spg5", 0), sums.get("spg_known", 0))
    res["baseline_crystal_system_accuracy"] = _ratio(sums.get("base_cs", 0), sums.get("cs_known", 0))
    if "connectivity" in tasks and "connectivity_counts" in stats:
        major = int(stats["connectivity_counts"].argmax())
        res["baseline_connectivity_accuracy"] = _ratio(sums.get(f"connectivity/class{major}", 0),
                                                       sums.get("connectivity/total", 0))
    n_bits = sums.get("node_features/total", 0) or None
    res["baseline_feature_accuracy"] = _ratio(sums.get("base_bits", 0), n_bits) if n_bits else None
    return res


def embed(teacher: Teacher, graphs: GraphSet, layers: Sequence[int] | None = None,
          device: torch.device | None = None, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Embeddings of every structure by the frozen teacher.

    Each selected layer (0 = the input embedding, ``L`` = the last convolution) is L2-normalised
    per atom, and the selected layers are concatenated; the last layer alone equals the encoder's
    ``node`` output. Per-structure embeddings are the means over the structure's atoms.

    Args:
        teacher: loaded teacher.
        graphs: structures featurised with the teacher's graph settings.
        layers: layer indices (default: the last; negative indices count from the end).
        device: where to run (default: CUDA when available).
        batch_size: structures per batch.

    Returns:
        ``ids`` ``(B,)``, ``graph`` ``(B, D·K)``, ``node`` ``(N, D·K)`` float32 (atoms of all
        structures concatenated in site order), ``offsets`` ``(B + 1,)`` (atoms of structure ``b``
        are ``node[offsets[b]:offsets[b+1]]``), ``layers`` ``(K,)``.

    Raises:
        UserError: a layer the teacher does not have.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_layers = teacher.encoder.config.layers
    chosen = []
    for k in layers or [n_layers]:
        j = k if k >= 0 else n_layers + 1 + k
        if not 0 <= j <= n_layers:
            raise UserError(f"layer {k} does not exist: the teacher has layers 0…{n_layers} (0 = input embedding)")
        chosen.append(j)
    encoder = teacher.encoder.to(device).eval()
    graph_parts, node_parts, sizes = [], [], []
    with torch.no_grad():
        for batch in _batches(graphs, teacher.graph_settings, batch_size, device):
            out = encoder(batch)
            node = torch.cat([F.normalize(out.layers[k], dim=-1) for k in chosen], dim=-1)
            counts = torch.bincount(out.batch, minlength=int(batch.num_graphs))
            graph = torch.zeros(int(batch.num_graphs), node.shape[1], device=node.device).index_add_(
                0, out.batch, node) / counts.clamp(min=1).unsqueeze(1)
            node_parts.append(node.cpu().numpy())
            graph_parts.append(graph.cpu().numpy())
            sizes.append(counts.cpu().numpy())
    sizes_all = np.concatenate(sizes)
    return {
        "ids": np.asarray(graphs.ids),
        "graph": np.concatenate(graph_parts).astype(np.float32),
        "node": np.concatenate(node_parts).astype(np.float32),
        "offsets": np.concatenate([[0], np.cumsum(sizes_all)]).astype(np.int64),
        "layers": np.asarray(chosen, dtype=np.int64),
    }
