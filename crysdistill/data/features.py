"""Atom feature tables (the 92-bit CGCNN vector, read from jarvis-tools)."""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

MAX_Z = 118


@functools.cache
def atom_feature_table(name: str = "cgcnn") -> tuple[np.ndarray, np.ndarray]:
    """The feature table indexed by atomic number.

    Args:
        name: feature set; only ``"cgcnn"`` (92 binary bits: group, period, electronegativity,
            covalent radius, valence electrons, first ionisation energy, electron affinity,
            block, atomic volume) is available.

    Returns:
        ``(table, known)``: ``table`` of shape ``(MAX_Z + 1, F)`` float32 (row ``Z``), and the
        boolean mask ``known`` of shape ``(MAX_Z + 1,)`` of elements that have features.
    """
    if name != "cgcnn":
        raise ValueError(f"unknown atom feature set {name!r}; available: 'cgcnn'")
    from jarvis.core import specie

    with open(specie.cgcnn_feature_json, encoding="utf-8") as fh:
        raw = json.load(fh)
    width = len(next(iter(raw.values())))
    table = np.zeros((MAX_Z + 1, width), dtype=np.float32)
    known = np.zeros(MAX_Z + 1, dtype=bool)
    for key, vec in raw.items():
        z = int(key)
        table[z] = vec
        known[z] = True
    table.setflags(write=False)
    known.setflags(write=False)
    return table, known


@functools.cache
def atom_feature_fingerprint(name: str = "cgcnn") -> str:
    """A short hash of the feature table, so a checkpoint can refuse data built with another."""
    table, known = atom_feature_table(name)
    h = hashlib.sha256(table.tobytes())
    h.update(known.tobytes())
    return h.hexdigest()[:16]
