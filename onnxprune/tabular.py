"""Tabular data for ODF2NNA's Algorithm 1: feature checks, standardisation with NaN
imputation, task detection, stratified splits, target scaling (numpy only; the MLP in
``mlp.py`` carries the standardisation inside the exported graph)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError, ParameterError
from .finetune.trainer import Task


@dataclass
class Standardizer:
    """Per-column training mean/std; NaN cells are imputed with the training mean.

    Rule: mean and std are NaN-aware (computed over the observed cells, population std);
    an all-NaN column gets mean 0; a column that is constant on its observed cells (or
    all-NaN) gets std 1, so it maps to 0 instead of dividing by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = as_features(x, "training features")
        data = x.astype(np.float64)
        observed = ~np.isnan(data)
        counts = observed.sum(axis=0)
        filled = np.where(observed, data, 0.0)
        mean = np.divide(filled.sum(axis=0), counts, out=np.zeros(x.shape[1]), where=counts > 0)
        centred = np.where(observed, data - mean, 0.0)
        var = np.divide(
            (centred**2).sum(axis=0), counts, out=np.zeros(x.shape[1]), where=counts > 0
        )
        std = np.sqrt(var)
        lo = np.where(observed, data, np.inf).min(axis=0)
        hi = np.where(observed, data, -np.inf).max(axis=0)
        constant = (counts == 0) | (lo == hi)
        std[constant] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def identity(cls, num_features: int) -> Standardizer:
        return cls(np.zeros(num_features, np.float32), np.ones(num_features, np.float32))

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def impute(self, x: np.ndarray) -> np.ndarray:
        """Raw features with NaN replaced by the training mean (float32).

        Useful to feed NaN-free data to tools that reject NaN; the MLP's outputs on the
        imputed data equal its outputs on the raw data.
        """
        x = as_features(x, "features", self.num_features)
        return np.where(np.isnan(x), self.mean, x).astype(np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(impute(x) - mean) / std in float32, exactly what the MLP computes first."""
        return ((self.impute(x) - self.mean) / self.std).astype(np.float32)


def as_features(x: np.ndarray, name: str, width: int | None = None) -> np.ndarray:
    """A 2-D numeric float32 feature table (NaN allowed: a missing value; inf is not)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows x features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{name} are empty")
    if width is not None and x.shape[1] != width:
        raise DataError(f"{name} have {x.shape[1]} columns, expected {width}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{name} must be numeric, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if np.isinf(x).any():
        raise DataError(f"{name} contain inf (NaN marks a missing value; inf is not allowed)")
    return x


# ----------------------------------------------------------------------------- tasks and splits


def detect_task(y: np.ndarray, force: Task | None = None) -> Task:
    """Classification for integer/bool labels, regression for floats.

    Float targets stay regression even when they are whole numbers with few distinct
    values (e.g. a 0-100 score): a float dtype is taken as a statement of intent. Pass
    ``force`` (or cast labels to int64) to override.
    """
    if force is not None:
        if force not in ("classification", "regression"):
            raise ParameterError(f"task must be classification or regression, got {force!r}")
        return force
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return "classification"
    if y.dtype.kind == "f":
        return "regression"
    raise DataError(f"cannot infer the task from targets of dtype {y.dtype}")


def split_dataset(
    x: np.ndarray,
    y: np.ndarray,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/test split -> (x_train, x_test, y_train, y_test).

    ``stratify`` defaults to True for classification targets: each class puts
    n_class * test_fraction rows (rounded half up) in the test set, keeping at least one
    row in training. Rows keep their original order within each part.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"features have {len(x)} rows but targets {len(y)}")
    if not 0.0 < test_fraction < 1.0:
        raise ParameterError(f"test fraction must be in (0, 1), got {test_fraction}")
    if stratify is None:
        stratify = detect_task(y) == "classification"
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), dtype=bool)
    if stratify:
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            take = int(np.floor(len(members) * test_fraction + 0.5))
            take = min(take, len(members) - 1)
            test_mask[rng.permutation(members)[:take]] = True
    else:
        take = int(np.floor(len(y) * test_fraction + 0.5))
        test_mask[rng.permutation(len(y))[:take]] = True
    if test_mask.all() or not test_mask.any():
        raise DataError(
            f"a {test_fraction:g} split of {len(y)} rows leaves an empty training or test set"
        )
    return x[~test_mask], x[test_mask], y[~test_mask], y[test_mask]


@dataclass
class TargetScaling:
    """Regression targets are trained standardised, then folded into the output layer.

    Per output column; a constant column keeps std 1.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, y: np.ndarray) -> TargetScaling:
        y = y.astype(np.float64)
        std = np.atleast_1d(y.std(axis=0))
        std[std == 0] = 1.0
        return cls(np.atleast_1d(y.mean(axis=0)), std)

    def apply(self, y: np.ndarray) -> np.ndarray:
        mean = self.mean if y.ndim > 1 else self.mean[0]
        std = self.std if y.ndim > 1 else self.std[0]
        return ((y.astype(np.float64) - mean) / std).astype(np.float32)
