"""Seeded train/validation/test splits by size or fraction, and target normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crysdistill.errors import ConfigError


def _count(size: float | None, n: int, what: str) -> int | None:
    if size is None:
        return None
    if size < 0:
        raise ConfigError(f"{what} must be >= 0, got {size}")
    if 0 < size < 1:
        return int(round(size * n))
    if size != int(size):
        raise ConfigError(f"{what} must be a whole number of structures or a fraction in (0, 1), got {size}")
    return int(size)


def make_splits(n: int, train_size: float | None, val_size: float | None, test_size: float | None,
                seed: int) -> dict[str, np.ndarray]:
    """Split ``range(n)`` at random with ``seed``.

    Sizes are counts (``>= 1``) or fractions (``< 1``). Test and validation are drawn from the end
    of one permutation and training from its start, so a fixed test set stays fixed when the
    training size changes (learning curves). ``None`` for ``train_size`` means "the rest";
    ``None`` for validation or test means 10 %.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}`` (sorted index arrays).
    """
    n_test = _count(test_size, n, "test size")
    n_val = _count(val_size, n, "validation size")
    n_test = int(round(0.1 * n)) if n_test is None else n_test
    n_val = int(round(0.1 * n)) if n_val is None else n_val
    rest = n - n_test - n_val
    n_train = _count(train_size, n, "train size")
    n_train = rest if n_train is None else n_train
    if n_val < 1 or n_train < 1:
        raise ConfigError(
            f"splits need at least one training and one validation structure; with {n} usable structures, "
            f"train {n_train}, validation {n_val}, test {n_test}"
        )
    if n_train > rest:
        raise ConfigError(
            f"train size {n_train} + validation {n_val} + test {n_test} exceed the {n} usable structures; "
            "lower the sizes"
        )
    perm = np.random.default_rng(seed).permutation(n)
    test = perm[n - n_test:] if n_test else perm[:0]
    val = perm[n - n_test - n_val:n - n_test]
    train = perm[:n_train]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


TRANSFORMS = ("none", "log")


@dataclass
class Normalizer:
    """Per-target transform and z-normalisation fitted on the training split (saved in checkpoints).

    ``encode(y) = (T(y) − mean) / std`` and ``decode(z) = T⁻¹(z · std + mean)`` with ``T`` the
    identity (``transform="none"``) or the natural logarithm (``"log"``, for positive, heavy-tailed
    targets: predictions come back in the user's units and are always positive).
    """

    mean: np.ndarray
    std: np.ndarray
    transform: str = "none"

    @classmethod
    def fit(cls, y: np.ndarray, transform: str = "none") -> Normalizer:
        """Fit on ``(n, T)`` targets (NaN = missing), after ``transform``."""
        t = _forward(np.asarray(y, dtype=np.float64), transform)
        mean = np.nanmean(t, axis=0)
        std = np.nanstd(t, axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean.astype(np.float64), std.astype(np.float64), transform)

    def encode(self, y: np.ndarray) -> np.ndarray:
        return (_forward(np.asarray(y, dtype=np.float64), self.transform) - self.mean) / self.std

    def decode(self, z: np.ndarray) -> np.ndarray:
        t = np.asarray(z, dtype=np.float64) * self.std + self.mean
        return np.exp(np.clip(t, -700, 700)) if self.transform == "log" else t

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "transform": self.transform}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64),
                   d.get("transform", "none"))


def _forward(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "none":
        return y
    if transform == "log":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(y)
    raise ValueError(f"unknown target transform {transform!r}; use one of {', '.join(TRANSFORMS)}")
