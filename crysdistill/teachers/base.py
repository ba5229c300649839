"""The teacher plugin contract.

A teacher is any frozen model that turns a crystal into per-atom embeddings a student can learn
from: the CrysGNN encoder this project pretrains, or a universal interatomic potential (CHGNet,
SevenNet-0) trained on millions of DFT calculations. It is wrapped in a :class:`TeacherAdapter`
that

1. is built from a *variant* (a checkpoint name the plugin ships, or a file) and loads the model
   frozen: evaluation mode, ``requires_grad`` off, no force or stress heads;
2. names its layers and their widths (layer 0 is the input embedding, the last is the deepest
   block; only rotation-invariant channels);
3. embeds a batch of pymatgen structures with :meth:`TeacherAdapter.embed`, returning a
   :class:`TeacherOutput` with one ``(n_sites, width)`` block per layer, rows in each structure's
   own site order, using the model's own graph builder;
4. describes itself: a :attr:`~TeacherAdapter.fingerprint` of package, version, checkpoint,
   weights and settings (what the on-disk embedding cache is keyed by), and what it was trained
   on (:class:`TrainingData`), so a run whose target the teacher has already seen says so;
5. rejects, in one line, a structure it cannot embed (:meth:`TeacherAdapter.check`).

Teachers are found through the ``crysdistill.teachers`` entry-point group; crysdistill never
imports a concrete teacher. The built-ins (``crysgnn``, ``chgnet``, ``sevennet``) are registered
in ``pyproject.toml`` exactly as a third party registers its own; ``docs/teachers.md`` shows how,
and :class:`crysdistill.testing.TeacherConformance` gives any teacher the same tests.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pymatgen.core import Structure
from torch import nn

#: Version of this contract. Teachers set ``api_version``; crysdistill refuses other versions.
TEACHER_API_VERSION = 1


@dataclass
class TeacherOutput:
    """Embeddings of ``B`` structures with ``S`` sites in total.

    Attributes:
        layers: one ``(S, D_l)`` float tensor per layer (``len(layers) == len(layer_widths)``);
            rows are the sites of structure 0 in site order, then those of structure 1, …
        ptr: ``(B + 1,)`` long offsets: the sites of structure ``b`` are rows ``ptr[b]:ptr[b+1]``.
    """

    layers: list[torch.Tensor]
    ptr: torch.Tensor

    def structure(self, b: int) -> list[torch.Tensor]:
        """The ``(n_sites, D_l)`` blocks of structure ``b``."""
        lo, hi = int(self.ptr[b]), int(self.ptr[b + 1])
        return [x[lo:hi] for x in self.layers]


@dataclass(frozen=True)
class TrainingData:
    """What a teacher was trained on, so that leaks into a result can be named.

    Attributes:
        dataset: the data set, in words (e.g. ``"MPtrj: 1.58 M DFT frames of the Materials Project"``).
        labels: what it learnt from (e.g. ``("energy", "forces", "stress", "magnetic moments")``).
        leaked_targets: label keys of user data that these labels give away (e.g.
            ``formation_energy_per_atom`` for a potential trained on Materials Project energies):
            ``train`` warns when its target is one of them, and benchmarks mark such cells.
        structures: whose structures it saw (e.g. ``"Materials Project relaxation trajectories"``).
    """

    dataset: str
    labels: tuple[str, ...] = ()
    leaked_targets: tuple[str, ...] = ()
    structures: str = ""

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "labels": list(self.labels), "leaked_targets": list(self.leaked_targets),
                "structures": self.structures}


def leaks(training: TrainingData, target: str) -> bool:
    """Whether the label ``target`` of user data is one this teacher was (in effect) trained on."""
    t = target.lower()
    return any(t == k.lower() for k in training.leaked_targets)


def leaks_into(teacher, target: str, fit_ids=None) -> bool:
    """:func:`leaks` for a loaded teacher in a run whose training and validation ids are ``fit_ids``.

    A teacher fine-tuned (``crysdistill finetune``) only on labels of the run's own training and
    validation structures saw no label the run does not see itself: the target it was fine-tuned
    on does not count as leaked there (its base teacher's training data still do). Anywhere else,
    or without ``fit_ids``, its fine-tuned targets count.
    """
    if not leaks(teacher.training, target):
        return False
    base, seen = getattr(teacher, "base", None), teacher.seen_ids()
    if base is None or not seen or fit_ids is None:
        return True
    return leaks(base.training, target) or not seen <= set(fit_ids)


def warn_if_leaks(teacher, targets, fit_ids=None, role: str = "teacher") -> bool:
    """Log one warning per target ``teacher`` leaks into (see :func:`leaks_into`); return whether any."""
    import logging

    any_leak = False
    for t in targets:
        if leaks_into(teacher, t, fit_ids):
            any_leak = True
            logging.getLogger("crysdistill.train").warning(
                "warning: %s %s was trained on %s (%s), which gives away the target %r: its gain on this target is "
                "not a gain a label it never saw would get", role, teacher.spec, ", ".join(teacher.training.labels),
                teacher.training.dataset, t)
    return any_leak


@dataclass
class TeacherInfo:
    """A loaded teacher's self-description (``crysdistill teacher list/info``, checkpoints, summaries)."""

    name: str
    variant: str
    package: str
    version: str
    layer_names: list[str]
    layer_widths: list[int]
    fingerprint: str
    training: TrainingData
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "variant": self.variant, "package": self.package, "version": self.version,
                "layers": [{"name": n, "width": w} for n, w in zip(self.layer_names, self.layer_widths)],
                "fingerprint": self.fingerprint, "trained_on": self.training.to_dict(), "settings": self.settings}


class TeacherAdapter(ABC):
    """Base class of every teacher.

    Subclasses set :attr:`name`, :attr:`api_version` and :attr:`default_variant`, and implement
    :meth:`load`, :meth:`embed`, :attr:`layer_names`, :attr:`layer_widths`, :attr:`training` and
    :attr:`module`; they may override :meth:`check`, :meth:`variants`, :meth:`claims`,
    :attr:`settings` and :attr:`batch_size`.

    Args:
        variant: which checkpoint (a name from :meth:`variants`, or a path the plugin accepts);
            ``None`` = :attr:`default_variant`.
        device: where the model runs (``None`` = CPU).

    Raises:
        crysdistill.errors.UserError: an unknown variant (the message lists the valid ones) or
            a missing package (the message names the ``pip install`` that brings it).
    """

    name: ClassVar[str] = "teacher"
    api_version: ClassVar[int] = TEACHER_API_VERSION
    default_variant: ClassVar[str] = ""
    #: PyPI distribution that provides the model (for messages and ``teacher list``).
    package: ClassVar[str] = "crysdistill"
    #: structures per forward pass when the embedding cache calls :meth:`embed`.
    batch_size: ClassVar[int] = 32

    def __init__(self, variant: str | None = None, device: str | torch.device | None = None) -> None:
        self.variant = str(variant) if variant else self.default_variant
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.load()
        self.module.eval()
        self.module.requires_grad_(False)
        self._fingerprint: str | None = None
        #: seed of :meth:`random_twin` for a twin, ``None`` for the teacher itself
        self.twin_seed: int | None = None

    # ---- to implement -----------------------------------------------------------------------

    @abstractmethod
    def load(self) -> None:
        """Load the model of :attr:`variant` (frozen; the base class also sets ``eval()``)."""

    @abstractmethod
    def embed(self, structures: Sequence[Structure]) -> TeacherOutput:
        """Embed a batch of structures; every layer of :attr:`layer_names`, sites in site order.

        Must run without gradients, be deterministic, and give each structure the same embedding
        in a batch as alone.
        """

    @property
    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the layers, input embedding first (e.g. ``["embedding", "conv1", …]``)."""

    @property
    @abstractmethod
    def layer_widths(self) -> list[int]:
        """Width of each layer's atom embeddings (rotation-invariant channels only)."""

    @property
    @abstractmethod
    def training(self) -> TrainingData:
        """What this teacher was trained on."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The frozen ``torch`` model (its state is part of the fingerprint; it must never change)."""

    # ---- may override -----------------------------------------------------------------------

    @classmethod
    def variants(cls) -> list[str]:
        """Checkpoint names this plugin can load without a network (for ``teacher list``)."""
        return [cls.default_variant] if cls.default_variant else []

    @classmethod
    def claims(cls, spec: str) -> bool:
        """Whether a bare ``--teacher`` value that is not a plugin name belongs to this plugin
        (e.g. a shipped checkpoint's name or a file path); default: no."""
        return False

    @property
    def settings(self) -> dict:
        """Settings that change the embeddings besides the weights (cutoffs, …); JSON-able."""
        return {}

    def check(self, structure: Structure) -> str | None:
        """Why this teacher cannot embed ``structure`` (``None`` if it can); cheap, called on every
        record before anything is embedded so that bad records are named (or skipped) up front."""
        return None

    def seen_ids(self) -> set[str]:
        """Ids of labelled records whose labels this teacher was trained or selected on (a fine-tuned
        teacher's training and validation structures); a run must not test on them."""
        return set()

    # ---- fine-tuning (optional: crysdistill finetune) ---------------------------------------

    def inputs(self, structures: Sequence[Structure]) -> list:
        """The model's own input of each structure (its graph), built once and kept by ``finetune``.

        Teachers that can be fine-tuned implement this and :meth:`forward`.
        """
        raise NotImplementedError

    def forward(self, inputs: list) -> TeacherOutput:
        """Every layer's atom embeddings of a batch of :meth:`inputs`, **with** gradients (the module
        may be in training mode); :meth:`embed` is this under ``torch.no_grad()``."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The modules that produce each layer, aligned with :attr:`layer_names` (to freeze the first ones)."""
        raise NotImplementedError

    @classmethod
    def finetunable(cls) -> bool:
        """Whether this teacher implements :meth:`inputs` and :meth:`forward`."""
        return cls.forward is not TeacherAdapter.forward and cls.inputs is not TeacherAdapter.inputs

    # ---- provided ---------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        """Index of the last layer (layers are ``0 … n_layers``)."""
        return len(self.layer_widths) - 1

    @property
    def spec(self) -> str:
        """What a user passes to ``--teacher`` to get this teacher back (``name:variant``); a random
        twin adds ``(random twin, seed S)`` and cannot be loaded back by name."""
        spec = f"{self.name}:{self.variant}" if self.variant != self.default_variant else self.name
        return spec if self.twin_seed is None else f"{spec} (random twin, seed {self.twin_seed})"

    def random_twin(self, seed: int = 0) -> TeacherAdapter:
        """The same teacher with its learning erased: a control for what the architecture alone gives.

        The plugin is loaded again (same variant, graph builder and settings) and every weight
        tensor with more than one element is redrawn from a normal distribution with that tensor's
        own mean and standard deviation (seeded; buffers such as normalisation statistics are
        kept). Activations keep their scale, so the twin embeds like the teacher, but nothing it
        learned about materials survives. Its :attr:`fingerprint` differs, so the cache keeps the
        two apart.
        """
        twin = type(self)(self.variant, self.device)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for p in twin.module.parameters():
                if p.numel() > 1:
                    mean, std = p.float().mean(), p.float().std()
                    p.copy_((torch.randn(p.shape, generator=g) * std + mean).to(p.dtype))
        twin.twin_seed = int(seed)
        twin._fingerprint = None
        return twin

    @property
    def fingerprint(self) -> str:
        """Hash of the plugin, package version, variant, settings and the model's weights."""
        if self._fingerprint is None:
            from crysdistill.utils import state_fingerprint

            h = hashlib.sha1(json.dumps({
                "plugin": self.name, "package": self.package, "version": self.package_version(),
                "variant": self.variant, "settings": self.settings,
                "weights": state_fingerprint(self.module.state_dict()),
            }, sort_keys=True).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def weights_fingerprint(self) -> str:
        """Hash of the model's weights and buffers now (to check that nothing changed them)."""
        from crysdistill.utils import state_fingerprint

        return state_fingerprint(self.module.state_dict())

    @classmethod
    def package_version(cls) -> str:
        from importlib import metadata

        try:
            return metadata.version(cls.package)
        except metadata.PackageNotFoundError:
            return "?"

    def info(self) -> TeacherInfo:
        return TeacherInfo(self.name, self.variant, self.package, self.package_version(), list(self.layer_names),
                           [int(w) for w in self.layer_widths], self.fingerprint, self.training, dict(self.settings))

    def describe(self) -> dict:
        """JSON-able description: name, variant, package, version, layers, fingerprint, training data."""
        return self.info().to_dict()


def check_unseen(teacher: TeacherAdapter, test_ids, role: str = "teacher") -> None:
    """Refuse a teacher that has seen the labels of a run's test structures (a fine-tuned teacher).

    Raises:
        crysdistill.errors.UserError: naming the teacher, how many test structures and the first ids.
    """
    from crysdistill.errors import UserError

    seen = teacher.seen_ids()
    both = [i for i in test_ids if i in seen] if seen else []
    if both:
        raise UserError(f"{role} {teacher.spec} was fine-tuned on the labels of {len(both)} structure(s) of this run's "
                        f"test split ({', '.join(both[:3])}{', …' if len(both) > 3 else ''}); fine-tune it with this "
                        "run's --train-size/--val-size/--test-size and seeds, or test on other structures")


def missing_package(teacher: str, package: str, exc: Exception) -> Exception:
    """A one-line error for a teacher whose optional package is not installed."""
    from crysdistill.errors import UserError

    return UserError(f"teacher {teacher!r} needs the package {package!r} ({type(exc).__name__}: {exc}); "
                     f"install it with: pip install {package}")
