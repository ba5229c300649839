"""The pretext-task contract: a module with its own head, loss, weight and exact metrics.

A pretext task is an ``nn.Module`` built from the encoder width, the graph settings, its loss
weight and its own options (chosen in the pretraining config). Each training step calls
``task(batch, encoder_output, encoder)`` and gets a :class:`PretextResult`. Tasks are found
through the ``crysdistill.pretext`` entry-point group, so a third-party package can add one.

Tasks that change the input (masking, perturbed positions) call ``encoder(batch, x=…,
edge_attr=…)`` themselves; the batch carries ``cart``, ``lattice``, ``image`` and ``distance``
so that edge lengths can be recomputed from displaced atoms.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from crysdistill.data.graph import GraphSettings
from crysdistill.errors import ConfigError
from crysdistill.plugins import PRETEXT_GROUP, load_plugin
from crysdistill.teacher.encoder import CrysGNNEncoder, EncoderOutput


@dataclass
class PretextResult:
    """What one task returns for one batch.

    Attributes:
        loss: scalar, the task's unweighted loss (the trainer multiplies by ``weight``).
        counts: additive counts, summed over steps and processes before dividing, so epoch
            accuracies are exact: at least ``correct`` and ``total``; tasks may add more (e.g.
            ``correct5`` for top-5, ``unknown`` for ignored labels).
    """

    loss: torch.Tensor
    counts: dict[str, torch.Tensor] = field(default_factory=dict)


class PretextTask(nn.Module):
    """Base class of pretext tasks.

    Args:
        width: width ``D`` of the encoder's embeddings.
        settings: graph settings of the data (atom-feature width, number of Gaussians, …).
        weight: weight of this task's loss in the total loss.
        **options: task-specific options (declared as keyword arguments by subclasses).

    Subclasses implement :meth:`forward` and may set ``needs_symmetry`` (labels from spglib) or
    override :attr:`label_keys` (labels of the corpus's records).
    """

    #: the task reads ``batch.spg`` / ``batch.crystal_system`` (graphs built with ``symmetry=True``)
    needs_symmetry: ClassVar[bool] = False

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Record labels the task reads; each reaches the batch as ``batch.label_<key>`` ``(B,)``
        (:func:`crysdistill.data.batch.label_attribute`), NaN where a structure has none."""
        return ()

    def __init__(self, width: int, settings: GraphSettings, weight: float = 0.25) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.width = width
        self.settings = settings
        self.weight = float(weight)

    def forward(self, batch, out: EncoderOutput, encoder: CrysGNNEncoder) -> PretextResult:
        """Loss and counts of this task on one batch.

        Args:
            batch: collated batch (:func:`crysdistill.data.batch.collate`).
            out: the encoder's output on the unmodified batch.
            encoder: the encoder itself, for tasks that encode a modified input.
        """
        raise NotImplementedError


def _nearest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid)) or 'none'}"


def task_options(cls: type[PretextTask]) -> dict[str, Any]:
    """The options a task class accepts, with their defaults (its keyword-only arguments)."""
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def task_label_keys(tasks: Iterable[PretextTask]) -> tuple[str, ...]:
    """The record labels any of ``tasks`` reads (:attr:`PretextTask.label_keys`), sorted."""
    return tuple(sorted({k for task in tasks for k in task.label_keys}))


def build_task(name: str, width: int, settings: GraphSettings, spec: Mapping[str, Any]) -> PretextTask:
    """Build the pretext task ``name`` from its config entry ``{"weight": w, "options": {…}}``.

    Raises:
        UserError: unknown task (listing the installed ones).
        ConfigError: unknown entry or option (naming the nearest valid one), or a task that needs
            symmetry labels on graphs built without them.
    """
    cls = load_plugin(PRETEXT_GROUP, name, "pretext task")
    if not (isinstance(cls, type) and issubclass(cls, PretextTask)):
        raise ConfigError(f"pretext task {name!r} ({cls!r}) is not a crysdistill PretextTask subclass")
    spec = dict(spec or {})
    unknown = set(spec) - {"weight", "options"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"tasks.{name}: unknown entry {key!r}{_nearest(key, ['weight', 'options'])}")
    options = dict(spec.get("options") or {})
    valid = task_options(cls)
    for key in options:
        if key not in valid:
            hint = _nearest(key, list(valid)) if valid else "; this task takes no options"
            raise ConfigError(f"tasks.{name}.options: unknown option {key!r}{hint}")
    if cls.needs_symmetry and not settings.symmetry:
        raise ConfigError(f"pretext task {name!r} needs symmetry labels; set graph.symmetry=true")
    try:
        weight = float(spec.get("weight", 0.25))
    except (TypeError, ValueError):
        raise ConfigError(f"tasks.{name}.weight: expected a number, got {spec.get('weight')!r}") from None
    try:
        return cls(width, settings, weight, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tasks.{name}: {exc}") from None
