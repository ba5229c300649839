"""The teacher checkpoint: a frozen encoder that describes itself.

It holds the encoder only (no pretext heads), its constructor config, the featuriser settings
(with the atom-feature table's fingerprint), the pretext tasks and their final validation
metrics, a fingerprint of the training data, and versions. It loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from crysdistill.data.graph import CrystalGraphFeaturizer, GraphSettings
from crysdistill.errors import CheckpointError
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderConfig
from crysdistill.utils import atomic_save, load_checkpoint, state_fingerprint, versions

KIND = "crysdistill-teacher"
FORMAT = 1

#: The teacher shipped inside the package (``--teacher default``).
DEFAULT_TEACHER_PATH = Path(__file__).resolve().parent.parent / "weights" / "teacher-default.pt"


@dataclass
class Teacher:
    """A loaded, frozen teacher.

    Attributes:
        encoder: the encoder, in evaluation mode, with ``requires_grad`` off everywhere.
        graph_settings: settings of the crystal graph it was trained on (students' teachers
            embeddings are computed on exactly this graph).
        fingerprint: hash of the encoder's weights and buffers.
        meta: everything else in the checkpoint (tasks, metrics, data fingerprint, versions).
        path: where it was loaded from.
    """

    encoder: CrysGNNEncoder
    graph_settings: GraphSettings
    fingerprint: str
    meta: dict = field(default_factory=dict)
    path: str = ""

    def featurizer(self) -> CrystalGraphFeaturizer:
        """The featuriser of the graph the teacher embeds.

        Symmetry labels are not needed to embed a structure, so they are left out: the graphs then
        share the on-disk cache with CGCNN-family students that use the same graph settings.
        """
        return CrystalGraphFeaturizer(replace(self.graph_settings, symmetry=False))


def save_teacher(path: str | os.PathLike, encoder: CrysGNNEncoder, graph_settings: GraphSettings,
                 tasks: dict | None = None, metrics: dict | None = None, data_fingerprint: str = "",
                 extra: dict | None = None) -> str:
    """Write a teacher checkpoint atomically; returns the teacher fingerprint.

    Args:
        path: output file.
        encoder: trained encoder (its state dict is stored, no pretext heads).
        graph_settings: the featuriser settings the encoder was trained with.
        tasks: pretext tasks and their settings (``{name: {"weight": …, …}}``).
        metrics: final validation metrics (``{name: float}``).
        data_fingerprint: hash of the training data.
        extra: more JSON-like entries (e.g. training config, epochs, seconds).
    """
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    fp = state_fingerprint(state)
    payload = {
        "kind": KIND,
        "format": FORMAT,
        "encoder_config": encoder.config.to_dict(),
        "state_dict": state,
        "graph_settings": graph_settings.to_dict(),
        "featurizer_fingerprint": CrystalGraphFeaturizer(graph_settings).fingerprint(),
        "tasks": tasks or {},
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        "fingerprint": fp,
        "versions": versions(),
        **(extra or {}),
    }
    atomic_save(payload, path)
    return fp


def bundled_teachers() -> dict[str, Path]:
    """Teachers shipped inside the package, by name: ``weights/teacher-<name>.pt``."""
    folder = DEFAULT_TEACHER_PATH.parent
    return {f.name[len("teacher-"):-len(".pt")]: f for f in sorted(folder.glob("teacher-*.pt"))
            if not f.name.endswith(".heads.pt")}


def resolve_teacher_path(path: str | os.PathLike) -> Path:
    """A shipped teacher's name (``default``, …) → its file; anything else unchanged."""
    name = str(path)
    if name == "default" and not DEFAULT_TEACHER_PATH.is_file():
        raise CheckpointError(
            f"the default teacher is not installed ({DEFAULT_TEACHER_PATH}); pretrain one with "
            "'crysdistill pretrain' and pass its teacher.pt"
        )
    bundled = bundled_teachers()
    if name in bundled and not Path(name).exists():
        return bundled[name]
    p = Path(path)
    if not p.exists() and p.suffix == "" and len(p.parts) == 1:
        raise CheckpointError(f"{name}: neither a teacher file nor a shipped teacher (shipped: "
                              f"{', '.join(bundled) or 'none'})")
    return p


def load_teacher(path: str | os.PathLike = "default") -> Teacher:
    """Load a teacher checkpoint (``"default"`` = the shipped one), frozen and in evaluation mode.

    Raises:
        CheckpointError: missing file, not a teacher checkpoint, or an incompatible format.
    """
    p = resolve_teacher_path(path)
    ckpt = load_checkpoint(p)
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{p}: is a {ckpt.get('kind')!r} checkpoint, not a teacher; pass a teacher.pt "
                              "written by 'crysdistill pretrain'")
    if int(ckpt.get("format", -1)) != FORMAT:
        raise CheckpointError(f"{p}: teacher format {ckpt.get('format')} is not supported (expected {FORMAT})")
    encoder = CrysGNNEncoder(EncoderConfig(**ckpt["encoder_config"]))
    encoder.load_state_dict(ckpt["state_dict"])
    encoder.eval()
    encoder.requires_grad_(False)
    settings = GraphSettings.from_dict(ckpt["graph_settings"])
    fp_now = CrystalGraphFeaturizer(settings).fingerprint()
    if fp_now != ckpt.get("featurizer_fingerprint"):
        raise CheckpointError(
            f"{p}: the teacher was trained with another atom-feature table or graph format than this "
            "installation builds (featuriser fingerprint differs); retrain it with this version"
        )
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict",)}
    return Teacher(encoder, settings, ckpt["fingerprint"], meta, str(p))


def check_compatible(teacher: Teacher, settings: GraphSettings, source: str = "data") -> None:
    """Refuse to embed data built with a different featuriser than the teacher's.

    Raises:
        CheckpointError: naming the differing settings.
    """
    a, b = teacher.graph_settings.to_dict(), settings.to_dict()
    diff = {k for k in a if k != "symmetry" and a[k] != b.get(k)}
    if diff:
        detail = ", ".join(f"{k}: teacher {a[k]!r} vs {source} {b.get(k)!r}" for k in sorted(diff))
        raise CheckpointError(
            f"{teacher.path}: teacher was made with another featuriser ({detail}); build the data with the "
            "teacher's graph settings or use a matching teacher"
        )


def load_split(teacher: Teacher) -> dict:
    """The pretraining split of ``teacher``: ``split.json`` of its run folder (or, for a teacher file
    copied elsewhere such as the shipped one, ``<name>.split.json`` beside it).

    Returns:
        The split record: ``data`` (the corpus path as given to ``pretrain``), ``val_ids``,
        ``val_keys`` (graph cache keys of the held-out structures), ``data_fingerprint``, sizes.

    Raises:
        CheckpointError: no split file, or one written by another run than this teacher's.
    """
    import json

    p = Path(teacher.path)
    candidates = [companion_path(p, ".split.json"), p.with_name("split.json")]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise CheckpointError(f"{p}: no split.json beside the teacher; --split needs the pretraining run's folder "
                              "(or pass --data with the structures to evaluate)")
    try:
        split = json.loads(path.read_text())
        keys = split["val_keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a pretraining split file ({exc})") from None
    expected = teacher.meta.get("data_fingerprint")
    if expected and split.get("data_fingerprint") not in (None, expected):
        raise CheckpointError(f"{path}: belongs to another pretraining run (data fingerprint "
                              f"{split.get('data_fingerprint')} vs the teacher's {expected})")
    split["val_keys"] = list(keys)
    split["path"] = str(path)
    return split


HEADS_KIND = "crysdistill-teacher-heads"


def companion_path(teacher_path: str | os.PathLike, suffix: str) -> Path:
    """A file that goes with a teacher: ``teacher.pt`` → ``teacher<suffix>`` (e.g. ``.heads.pt``)."""
    p = Path(teacher_path)
    return p.with_name((p.name[:-3] if p.name.endswith(".pt") else p.name) + suffix)


def heads_path(teacher_path: str | os.PathLike) -> Path:
    """The heads file that goes with a teacher: ``teacher.pt`` → ``teacher.heads.pt``."""
    return companion_path(teacher_path, ".heads.pt")


def save_heads(path: str | os.PathLike, teacher_fingerprint: str, tasks: dict, heads: dict,
               train_stats: dict) -> None:
    """Write the pretext heads of a teacher (for ``crysdistill teacher eval``) atomically.

    Args:
        path: output file (see :func:`heads_path`).
        teacher_fingerprint: fingerprint of the teacher these heads were trained with.
        tasks: ``{name: {"weight": …, "options": {…}}}``.
        heads: ``{name: state_dict}`` of every task.
        train_stats: tensors measured on the training split (crystal-system centroids, label
            histograms for majority baselines), see :func:`crysdistill.teacher.evaluate.training_statistics`.
    """
    atomic_save({
        "kind": HEADS_KIND,
        "format": FORMAT,
        "teacher_fingerprint": teacher_fingerprint,
        "tasks": tasks,
        "heads": heads,
        "train_stats": train_stats,
        "versions": versions(),
    }, path)


def load_heads(teacher: Teacher, path: str | os.PathLike | None = None) -> dict:
    """Load the pretext heads of ``teacher`` (default: the file next to it).

    Raises:
        CheckpointError: missing file, not a heads file, or heads of another teacher.
    """
    p = Path(path) if path is not None else heads_path(teacher.path)
    if not p.is_file():
        raise CheckpointError(f"{p}: the pretext heads of {teacher.path} are missing; 'teacher eval' needs the "
                              ".heads.pt file written next to teacher.pt by 'crysdistill pretrain'")
    ckpt = load_checkpoint(p)
    if ckpt.get("kind") != HEADS_KIND:
        raise CheckpointError(f"{p}: is a {ckpt.get('kind')!r} checkpoint, not teacher heads")
    if ckpt.get("teacher_fingerprint") != teacher.fingerprint:
        raise CheckpointError(f"{p}: these heads belong to teacher {ckpt.get('teacher_fingerprint')}, not to "
                              f"{teacher.path} ({teacher.fingerprint}); keep teacher.pt and its .heads.pt together")
    return ckpt
