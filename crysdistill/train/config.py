"""The training config: one typed dataclass, filled from YAML, CLI flags and ``key=value`` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        optimizer: ``adam`` or ``adamw``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (Adam).
        scheduler: ``none``, ``cosine`` (to 1 % of ``lr``), ``onecycle`` (ALIGNN) or ``step``
            (×``step_gamma`` at ``step_epoch``, as CGCNN/CrysGNN).
        step_epoch: epoch of the step decay.
        step_gamma: factor of the step decay.
        grad_clip: clip the gradient norm to this (0 = off).
    """

    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine", "onecycle", "step"] = "cosine"
    step_epoch: int = 100
    step_gamma: float = 0.1
    grad_clip: float = 5.0


@dataclass
class DistillConfig:
    """How the teacher's knowledge is passed on (used when a teacher is given).

    Attributes:
        node_weight: weight of the atom-embedding term (MSE of L2-normalised embeddings).
        graph_weight: weight of the structure-embedding term (0 = off).
        projection: learn a linear map from the student's width to the teacher's (needed when
            they differ; CrysGNN had none and required a 64-wide student).
        teacher_layers: teacher layers matched, concatenated (0 = input embedding, -1 = last;
            ``[0, 1, 2]`` = NEGNN's multi-scale embeddings).
        weight_grid: the safeguard: if not empty, train once per ``node_weight`` in this grid
            (include 0 = vanilla), keep the one with the best validation MAE, test only that one.
        inject_layers: embedding injection (NEGNN): concatenate the frozen teacher's atom
            embeddings of these layers (e.g. ``[0, 1, 2]``) to the student's input atom features,
            for training and prediction (``[]`` = off; students with ``accepts_extra_atom_features``).
    """

    node_weight: float = 0.1
    graph_weight: float = 0.0
    projection: bool = True
    teacher_layers: list[int] = field(default_factory=lambda: [-1])
    weight_grid: list[float] = field(default_factory=list)
    inject_layers: list[int] = field(default_factory=list)


@dataclass
class PseudoConfig:
    """The teacher-labelled corpus (response distillation): off unless ``teacher`` and ``data`` are set.

    A teacher + head (``crysdistill head``: an MLP grid and ridge on the frozen teacher's
    per-structure embeddings) is fitted on the run's training split and chosen on its validation
    split; it labels structures of an unlabelled corpus (none of them in the run's splits), and
    each training step adds a batch of those structures, their loss weighted by ``weight``. The
    student that comes out needs no teacher to predict.

    Attributes:
        teacher: the teacher whose head labels the corpus (any ``--teacher`` value); ``None`` = off.
        data: the unlabelled corpus (any format ``--data`` reads).
        weight: weight of the loss on teacher labels (the loss on true labels has weight 1).
        max_structures: corpus structures labelled (a seeded subsample; 0 = all).
        ratio: teacher-labelled structures per true-labelled structure in each step.
    """

    teacher: str | None = None
    data: str | None = None
    weight: float = 1.0
    max_structures: int = 10000
    ratio: float = 1.0


@dataclass
class CorpusTermConfig:
    """Encoder distillation kept on while a student started from a distilled encoder (``init``)
    trains on labels: off unless ``weight`` > 0.

    Each training step adds a batch of unlabelled corpus structures (none of them in the run's
    splits) on which the student's atom embeddings must still reproduce the teacher's, through
    the linear maps the encoder was distilled with, so the labels cannot pull the encoder away
    from what it learnt from the teacher. Teacher, layers and maps come from the ``init`` file;
    the teacher's embeddings come from the cache (the student still predicts without it).

    Attributes:
        weight: weight of the distillation loss on the corpus (0 = off).
        data: the corpus (default: the one the ``init`` encoder was distilled on, if it is there).
        max_structures: corpus structures used (a seeded subsample; 0 = all).
        ratio: corpus structures per labelled structure in each step.
    """

    weight: float = 0.0
    data: str | None = None
    max_structures: int = 10000
    ratio: float = 1.0


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``config.yaml`` in the run folder).

    Attributes:
        student: registered student name (``crysdistill students list``).
        model: the student's model config (keys of its ``default_config``).
        targets: label keys to predict.
        teacher: any teacher (``chgnet``, ``sevennet``, a shipped CrysGNN name, a teacher.pt) or ``None``.
        init: start the student from this encoder: a ``student.pt`` of ``crysdistill distill`` or a
            shipped pre-distilled student (``cgcnn-sevennet``); ``None`` = fresh weights.
        train_size: training structures (count, fraction < 1, or ``None`` = the rest).
        val_size: validation structures (count or fraction; default 10 %).
        test_size: test structures (count or fraction; default 10 %).
        seed: seed of the initialisation and the batch order (and of the split, unless ``split_seed``).
        split_seed: seed of the train/validation/test split (default: ``seed``); fix it to compare
            several model seeds on one split.
        epochs: training epochs.
        batch_size: structures per step.
        eval_batch_size: structures per step when predicting.
        optim: optimiser settings.
        distill: distillation settings.
        pseudo: the teacher-labelled corpus (response distillation; off by default).
        corpus: encoder distillation kept on during training from ``init`` (off by default).
        loss: the property loss on the (transformed, z-normalised) target: ``mse`` (default),
            ``l1`` or ``huber`` (δ = 1 standard deviation); L1 and Huber resist a few extreme labels.
        target_transform: ``none`` (default) or ``log`` (positive targets only: the student learns
            log(y); predictions, MAEs and CSVs are in the user's units).
        on_error: bad structures: ``raise`` at the first, or ``skip`` with a summary.
        missing_labels: rows whose targets are all missing or not numbers: ``skip`` (counted) or ``raise``.
        workers: processes for graph building and teacher embeddings.
        cache_dir: graph/embedding cache (default ``$CRYSDISTILL_CACHE`` or ``~/.cache/crysdistill``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (0 = torch's default).
    """

    student: str = "cgcnn"
    model: dict = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    teacher: str | None = None
    init: str | None = None
    train_size: float | None = None
    val_size: float | None = None
    test_size: float | None = None
    seed: int = 0
    split_seed: int | None = None
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 256
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    corpus: CorpusTermConfig = field(default_factory=CorpusTermConfig)
    loss: Literal["mse", "l1", "huber"] = "mse"
    target_transform: Literal["none", "log"] = "none"
    on_error: Literal["raise", "skip"] = "raise"
    missing_labels: Literal["skip", "raise"] = "skip"
    workers: int = 2
    cache_dir: str | None = None
    device: str = "auto"
    threads: int = 0
