"""Records: what every reader yields, and the checks every structure passes before featurisation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

from crysdistill.errors import RecordError

#: Keys of the ``../shared/data`` format that describe the structure rather than label it.
DESCRIPTIVE_KEYS = frozenset(
    {"id", "source", "structure", "cif", "atoms", "formula", "n_sites", "spg_number", "crystal_system", "jid"}
)


@dataclass
class Record:
    """One crystal.

    Attributes:
        id: identifier (e.g. ``mp-1234``), unique within a dataset.
        structure: the ordered pymatgen structure.
        labels: property values by key; ``None`` where the label is missing.
        origin: where the record came from, for error messages (``file:line``).
    """

    id: str
    structure: Structure
    labels: dict[str, float | None] = field(default_factory=dict)
    origin: str = ""

    @property
    def name(self) -> str:
        """A human-readable name for messages: origin and id."""
        if self.origin and self.origin != self.id:
            return f"{self.origin} ({self.id})"
        return self.id


@dataclass
class Problem:
    """A record that was skipped, and why."""

    record: str
    reason: str


def check_structure(structure: Structure, name: str, min_distance: float = 0.5) -> None:
    """Reject structures no graph can honestly represent.

    Args:
        structure: the structure to check.
        name: record name for the message.
        min_distance: smallest allowed interatomic distance in Å (periodic images included).

    Raises:
        RecordError: if the structure is empty, disordered or has overlapping atoms.
    """
    if len(structure) == 0:
        raise RecordError(name, "structure has no atoms", "remove this record")
    if not structure.is_ordered:
        raise RecordError(
            name,
            "disordered structure (partial occupancies)",
            "order it first (e.g. pymatgen's OrderDisorderedStructureTransformation) or remove it",
        )
    if structure.volume <= 1e-6 or not np.isfinite(structure.lattice.matrix).all():
        raise RecordError(name, "degenerate lattice (zero volume)", "fix the lattice vectors")
    if not np.isfinite(structure.frac_coords).all():
        raise RecordError(name, "non-finite atomic coordinates (NaN or infinity)", "fix the coordinates or remove it")
    centers, points, _, dists = structure.get_neighbor_list(min_distance, exclude_self=True)
    if len(dists):
        k = int(np.argmin(dists))
        i, j = int(centers[k]), int(points[k])
        raise RecordError(
            name,
            f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are "
            f"{dists[k]:.3f} Å apart (closer than {min_distance} Å)",
            "the structure is probably corrupt or has duplicated sites; fix or remove it",
        )
