"""Structure → crystal graph: the CGCNN/CrysGNN graph, as a pure, deterministic function.

A *featuriser* turns one pymatgen ``Structure`` into a dict of numpy arrays. Arrays (not torch
objects) keep the result cacheable on disk without pickle and cheap to send between processes.
The teacher and the CGCNN-family students use :class:`CrystalGraphFeaturizer`; students with
other graphs (ALIGNN) bring their own :class:`Featurizer`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from pymatgen.core import Structure

from crysdistill.data.features import atom_feature_fingerprint, atom_feature_table
from crysdistill.data.symmetry import UNKNOWN, crystal_system_index, space_group_number
from crysdistill.errors import ConfigError, RecordError

#: Bumped whenever the arrays a featuriser writes change meaning; part of every cache key.
GRAPH_FORMAT_VERSION = 1

Arrays = dict[str, np.ndarray]


class Featurizer(ABC):
    """One job: structure in, dict of numpy arrays out. Deterministic and picklable."""

    #: short name used in cache folder names
    name: str = "featurizer"

    @abstractmethod
    def settings(self) -> dict:
        """JSON-serialisable settings that fully determine the output."""

    @abstractmethod
    def featurize(self, structure: Structure, record: str = "structure") -> Arrays:
        """Build the arrays of one structure.

        Raises:
            RecordError: if this featuriser cannot represent the structure (``record`` names it).
        """

    def fingerprint(self) -> str:
        """Hash of the featuriser's class, settings and format version: the cache key prefix."""
        blob = json.dumps(
            {"class": f"{type(self).__module__}.{type(self).__qualname__}", "settings": self.settings(),
             "format": GRAPH_FORMAT_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GraphSettings:
    """Settings of the CGCNN/CrysGNN crystal graph (defaults from CrysGNN and CGCNN).

    Attributes:
        cutoff: neighbour search radius in Å.
        max_neighbors: keep at most this many nearest neighbours per atom (periodic images count
            separately, so the same neighbour may appear several times).
        gaussian_step: spacing of the Gaussian centres 0, step, …, cutoff (Å): 41 for 8 Å / 0.2 Å.
        gaussian_width: width of each Gaussian, ``exp(-(d - mu)^2 / width^2)``.
        atom_features: atom feature table (``"cgcnn"``: 92 bits from jarvis-tools).
        symprec: spglib distance tolerance (Å) for space-group labels.
        angle_tolerance: spglib angle tolerance (degrees; ``-1`` = spglib default).
        symmetry: compute space-group / crystal-system labels (needed only for pretraining).
    """

    cutoff: float = 8.0
    max_neighbors: int = 12
    gaussian_step: float = 0.2
    gaussian_width: float = 0.2
    atom_features: str = "cgcnn"
    symprec: float = 0.01
    angle_tolerance: float = 5.0
    symmetry: bool = True

    def __post_init__(self) -> None:
        # normalise numbers so that equal settings (cutoff=8 and 8.0) give the same fingerprint
        for name in ("cutoff", "gaussian_step", "gaussian_width", "symprec", "angle_tolerance"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.cutoff <= 0 or self.max_neighbors < 1 or self.gaussian_step <= 0 or self.gaussian_width <= 0:
            raise ConfigError(
                f"invalid graph settings {self}: cutoff, max_neighbors, gaussian_step and gaussian_width must be > 0"
            )

    @property
    def n_gaussians(self) -> int:
        """Number of Gaussian edge features (41 for the defaults)."""
        return int(round(self.cutoff / self.gaussian_step)) + 1

    @property
    def atom_feature_dim(self) -> int:
        """Width of the atom feature vector (92 for ``cgcnn``)."""
        return atom_feature_table(self.atom_features)[0].shape[1]

    @classmethod
    def from_dict(cls, d: dict) -> GraphSettings:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ConfigError(f"unknown graph setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def neighbor_list(
    lattice: np.ndarray, cart_coords: np.ndarray, cutoff: float, max_neighbors: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list, at most ``max_neighbors`` nearest per atom, without Python loops.

    Uses pymatgen's compiled cell-list search (the engine behind ``Structure.get_neighbor_list``)
    and keeps, per centre, the nearest ``max_neighbors`` by a stable sort on distance, so ties are
    broken in search order exactly as CGCNN's ``sorted(..., key=distance)[:12]`` does.

    Args:
        lattice: ``(3, 3)`` lattice vectors as rows (Å).
        cart_coords: ``(N, 3)`` Cartesian coordinates (Å).
        cutoff: radius (Å).
        max_neighbors: neighbours kept per centre.

    Returns:
        ``(center, neighbor, image, distance)`` with shapes ``(E,)``, ``(E,)``, ``(E, 3)``, ``(E,)``,
        sorted by centre then distance.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(cart_coords, dtype=float)
    center, neighbor, image, dist = find_points_in_spheres(
        coords, coords, r=float(cutoff), pbc=np.ones(3, dtype=np.int64),
        lattice=np.ascontiguousarray(lattice, dtype=float), tol=1e-8,
    )
    n = len(coords)
    is_self = (center == neighbor) & (dist <= 1e-8)
    # Sorting every pair within the cutoff (~150 per atom at 8 Å) cost twice the search itself.
    # Keep only pairs up to each centre's max_neighbors-th smallest distance (ties included),
    # found with a partition of a padded (centre, candidate) matrix, and sort those few. The
    # survivors keep their search order, so the stable sort below gives exactly the result of
    # stably sorting every pair.
    d = np.where(is_self, np.inf, dist)
    counts = np.bincount(center, minlength=n)
    threshold = np.full(n, np.inf)
    if len(d) and counts.max() > max_neighbors:
        grouped = np.argsort(center, kind="stable")  # pymatgen returns pairs grouped by centre
        starts = np.cumsum(counts) - counts
        padded = np.full((n, counts.max()), np.inf)
        padded[center[grouped], np.arange(len(d)) - starts[center[grouped]]] = d[grouped]
        threshold = np.partition(padded, max_neighbors - 1, axis=1)[:, max_neighbors - 1]
    keep = np.flatnonzero((d <= threshold[center]) & ~is_self)
    center, neighbor, image, dist = center[keep], neighbor[keep], image[keep], dist[keep]
    order = np.lexsort((dist, center))  # stable: equal distances keep search order
    center, neighbor, image, dist = center[order], neighbor[order], image[order], dist[order]
    counts = np.bincount(center, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(center)) - np.repeat(starts, counts)
    sel = rank < max_neighbors
    return center[sel], neighbor[sel], image[sel], dist[sel]


class CrystalGraphFeaturizer(Featurizer):
    """The CGCNN/CrysGNN crystal graph.

    Output arrays (``N`` atoms, ``E`` directed edges, messages flow ``neighbor → center``):

    * ``z`` ``(N,)`` int16 atomic numbers (features come from the table at collate time);
    * ``edge_index`` ``(2, E)`` int32, row 0 the neighbour ``j``, row 1 the centre ``i``;
    * ``distance`` ``(E,)`` float32 in Å; ``image`` ``(E, 3)`` int8 lattice offset of ``j``;
    * ``cart`` ``(N, 3)`` and ``lattice`` ``(3, 3)`` float32 (for tasks that perturb positions);
    * ``spg`` ``(1,)`` int16 space group (``-1`` unknown), ``crystal_system`` ``(1,)`` int8.

    Node ``k`` is site ``k`` of the structure: the site index is the node index.
    """

    name = "crystalgraph"

    def __init__(self, settings: GraphSettings | None = None) -> None:
        self.graph_settings = settings or GraphSettings()

    def settings(self) -> dict:
        d = self.graph_settings.to_dict()
        d["atom_feature_table"] = atom_feature_fingerprint(self.graph_settings.atom_features)
        return d

    def featurize(self, structure: Structure, record: str = "structure") -> Arrays:
        s = self.graph_settings
        numbers = np.asarray(structure.atomic_numbers, dtype=np.int64)
        check_elements(numbers, s.atom_features, record)
        lattice = structure.lattice.matrix
        cart = structure.cart_coords
        center, neighbor, image, dist = neighbor_list(lattice, cart, s.cutoff, s.max_neighbors)
        counts = np.bincount(center, minlength=len(numbers))
        if (counts == 0).any():
            i = int(np.argmin(counts))
            raise RecordError(
                record,
                f"atom {i} ({structure[i].specie}) has no neighbour within {s.cutoff} Å",
                "increase the graph cutoff or remove this structure",
            )
        spg = UNKNOWN
        if s.symmetry:
            spg = space_group_number(lattice, structure.frac_coords, numbers, s.symprec, s.angle_tolerance)
        return {
            "z": numbers.astype(np.int16),
            "edge_index": np.stack([neighbor, center]).astype(np.int32),
            "distance": dist.astype(np.float32),
            "image": image.astype(np.int8),
            "cart": cart.astype(np.float32),
            "lattice": lattice.astype(np.float32),
            "spg": np.array([spg], dtype=np.int16),
            "crystal_system": np.array([crystal_system_index(spg)], dtype=np.int8),
        }


def check_elements(numbers: np.ndarray, table_name: str, record: str) -> None:
    """Raise a :class:`RecordError` naming any element without features in ``table_name``."""
    _, known = atom_feature_table(table_name)
    bad = (numbers < 0) | (numbers >= len(known))
    bad |= ~known[np.clip(numbers, 0, len(known) - 1)]
    if bad.any():
        from pymatgen.core import Element

        missing = sorted({Element.from_Z(int(z)).symbol for z in numbers[bad]})
        lo, hi = int(np.flatnonzero(known)[0]), int(np.flatnonzero(known)[-1])
        raise RecordError(
            record,
            f"element(s) {', '.join(missing)} outside the '{table_name}' atom feature table (Z {lo}–{hi})",
            "remove structures with these elements",
        )


def gaussian_expansion(distance: torch.Tensor, settings: GraphSettings) -> torch.Tensor:
    """Gaussian basis of edge lengths: ``exp(-(d - mu_k)^2 / width^2)``.

    Args:
        distance: ``(E,)`` edge lengths in Å.
        settings: graph settings (centres ``0, step, …, cutoff``).

    Returns:
        ``(E, n_gaussians)`` edge features.
    """
    centers = torch.linspace(0.0, settings.cutoff, settings.n_gaussians, dtype=distance.dtype, device=distance.device)
    return torch.exp(-((distance.unsqueeze(-1) - centers) ** 2) / settings.gaussian_width**2)
