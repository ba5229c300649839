"""The student adapter contract.

A student is any crystal property predictor wrapped in a :class:`StudentAdapter`. The adapter

1. names a :class:`~crysdistill.data.graph.Featurizer` that builds *the student's own* graph from a
   pymatgen ``Structure`` (its own cutoffs and features; graphs are cached on disk by crysdistill);
2. collates a list of those graphs into a batch;
3. returns from one forward pass a :class:`StudentOutput`: the prediction, the per-atom embeddings
   with the site index of every atom node, and a per-structure embedding;
4. serialises its own config, so a checkpoint can rebuild it without the training script.

Adapters are found through the ``crysdistill.students`` entry-point group; crysdistill never
imports a concrete student. See ``docs/adapters.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crysdistill.data.graph import Arrays, Featurizer

#: Version of this contract. Adapters set ``api_version``; crysdistill refuses other major versions.
STUDENT_API_VERSION = 1


@dataclass
class StudentOutput:
    """One forward pass over a batch of ``B`` structures with ``N`` atom nodes in total.

    Attributes:
        prediction: ``(B, T)`` predicted (normalised) targets.
        node_embedding: ``(N, D)`` embeddings of atom nodes only, after the last convolution
            (no line-graph or virtual nodes).
        site_index: ``(N,)`` long: index of each atom node's site in its structure.
        node_batch: ``(N,)`` long: index of each atom node's structure in the batch.
        graph_embedding: ``(B, D_g)`` per-structure embedding (the pooled representation).
    """

    prediction: torch.Tensor
    node_embedding: torch.Tensor
    site_index: torch.Tensor
    node_batch: torch.Tensor
    graph_embedding: torch.Tensor


class StudentAdapter(nn.Module, ABC):
    """Base class of every student.

    Subclasses set :attr:`name` and :attr:`api_version`, implement :meth:`default_config`,
    :meth:`build`, :meth:`featurizer`, :meth:`collate` and :meth:`forward`.

    Args:
        config: overrides of :meth:`default_config` (unknown keys are an error).
        n_targets: number of predicted targets ``T``.
        extra_atom_features: width of extra per-atom input features the student receives through
            :meth:`collate` (``0`` = none); only adapters with :attr:`accepts_extra_atom_features`.
    """

    name: ClassVar[str] = "student"
    api_version: ClassVar[int] = STUDENT_API_VERSION
    accepts_extra_atom_features: ClassVar[bool] = False

    def __init__(self, config: dict | None = None, n_targets: int = 1, extra_atom_features: int = 0) -> None:
        super().__init__()
        from crysdistill.config import _suggest
        from crysdistill.errors import ConfigError

        defaults = self.default_config()
        config = dict(config or {})
        for k in config:
            if k not in defaults:
                raise ConfigError(f"unknown {self.name} model key {k!r}{_suggest(k, list(defaults))}")
        if extra_atom_features and not self.accepts_extra_atom_features:
            raise ConfigError(f"student {self.name!r} does not accept extra atom features")
        self.config: dict = {**defaults, **config}
        self.n_targets = int(n_targets)
        self.extra_atom_features = int(extra_atom_features)
        self.build()

    # ---- to implement -----------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def default_config(cls) -> dict:
        """Default model config (JSON-serialisable); the keys users may set."""

    @abstractmethod
    def build(self) -> None:
        """Create the model's modules from ``self.config``, ``self.n_targets`` and ``self.extra_atom_features``."""

    @abstractmethod
    def featurizer(self) -> Featurizer:
        """The featuriser of this student's graph (a fresh or cached object; must be picklable)."""

    @abstractmethod
    def collate(self, graphs: Sequence[Arrays], extra_atom_features: Sequence[torch.Tensor] | None = None) -> Any:
        """Batch graphs from :meth:`featurizer`.

        Args:
            graphs: one array dict per structure.
            extra_atom_features: optional ``(n_sites, extra_atom_features)`` tensor per structure,
                row ``k`` for site ``k``.
        """

    @abstractmethod
    def forward(self, batch: Any) -> StudentOutput:
        """Predict a collated batch."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Width ``D`` of :attr:`StudentOutput.node_embedding`."""

    # ---- provided ---------------------------------------------------------------------------

    @property
    def graph_embedding_dim(self) -> int:
        """Width ``D_g`` of :attr:`StudentOutput.graph_embedding` (default: ``embedding_dim``)."""
        return self.embedding_dim

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a collated batch to ``device`` (default: ``batch.to(device)``)."""
        return batch.to(device)

    def describe(self) -> dict:
        """What a checkpoint stores to rebuild this adapter."""
        return {
            "name": self.name,
            "api_version": self.api_version,
            "config": dict(self.config),
            "n_targets": self.n_targets,
            "extra_atom_features": self.extra_atom_features,
        }
