"""Data: readers (path → records), featurisers (structure → graph arrays), the on-disk cache."""

from crysdistill.data.cache import (
    GraphSet,
    GraphStore,
    build_graphs,
    default_cache_dir,
    structure_key,
)
from crysdistill.data.graph import (
    CrystalGraphFeaturizer,
    Featurizer,
    GraphSettings,
    gaussian_expansion,
)
from crysdistill.data.readers import Dataset, read_dataset
from crysdistill.data.records import Problem, Record

__all__ = [
    "CrystalGraphFeaturizer",
    "Dataset",
    "Featurizer",
    "GraphSet",
    "GraphSettings",
    "GraphStore",
    "Problem",
    "Record",
    "build_graphs",
    "default_cache_dir",
    "gaussian_expansion",
    "read_dataset",
    "structure_key",
]
