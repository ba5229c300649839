"""Space-group and crystal-system labels from spglib, with a recorded tolerance."""

from __future__ import annotations

import os
import warnings

import numpy as np

#: Crystal systems in the order of their space-group numbers; index = class label.
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_UPPER = (2, 15, 74, 142, 167, 194, 230)

#: Label used for structures spglib cannot analyse.
UNKNOWN = -1


def crystal_system_index(spg_number: int) -> int:
    """Crystal-system class (0…6) of a space-group number (1…230); ``UNKNOWN`` otherwise."""
    if not 1 <= spg_number <= 230:
        return UNKNOWN
    for i, upper in enumerate(_UPPER):
        if spg_number <= upper:
            return i
    return UNKNOWN  # pragma: no cover


def space_group_number(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, symprec: float, angle_tolerance: float
) -> int:
    """Space-group number (1…230) or ``UNKNOWN`` if spglib cannot determine it.

    Args:
        lattice: ``(3, 3)`` lattice vectors as rows (Å).
        frac_coords: ``(N, 3)`` fractional coordinates.
        numbers: ``(N,)`` atomic numbers.
        symprec: distance tolerance in Å.
        angle_tolerance: angle tolerance in degrees (``-1`` for spglib's own default).
    """
    os.environ.setdefault("SPGLIB_WARNING", "OFF")  # C-level warnings would break one-line error output
    import spglib

    cell = (np.asarray(lattice, float), np.asarray(frac_coords, float), np.asarray(numbers, int))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
    except Exception:
        return UNKNOWN
    if dataset is None:
        return UNKNOWN
    number = int(dataset.number if hasattr(dataset, "number") else dataset["number"])
    return number if 1 <= number <= 230 else UNKNOWN
