"""Training data held as row-aligned arrays, and the seeded order batches are drawn in.

Arrays keep their stored dtype apart from float64 -> float32 (the dtype of torch/ONNX
weights), so uint8 images and memory-mapped ``.npy`` files are never copied whole; the
model (e.g. round_trip's ``_CastInputs``) casts each batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError, ParameterError

TASKS = ("classification", "regression")


@dataclass(eq=False)
class TrainData:
    """Inputs (one array, or a tuple for multi-input models) and targets, row-aligned.

    Targets are int64 class indices for classification and float targets for regression.
    Float inputs are cast to float32 (the dtype of torch/ONNX weights); other dtypes
    (e.g. int64 token ids) are kept.
    """

    inputs: np.ndarray | tuple[np.ndarray, ...]
    targets: np.ndarray
    arrays: tuple[np.ndarray, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        raw = self.inputs if isinstance(self.inputs, (tuple, list)) else (self.inputs,)
        if not raw:
            raise DataError("training data has no input arrays")
        arrays = []
        for array in raw:
            array = np.asarray(array)
            if array.dtype.kind == "f" and array.dtype != np.float32:
                array = array.astype(np.float32)
            arrays.append(np.ascontiguousarray(array))
        self.arrays = tuple(arrays)
        self.targets = np.ascontiguousarray(np.asarray(self.targets))
        rows = {len(a) for a in self.arrays} | {len(self.targets)}
        if len(rows) != 1:
            raise DataError(f"inputs and targets have different row counts: {sorted(rows)}")
        if len(self.targets) == 0:
            raise DataError("training data is empty")

    def __len__(self) -> int:
        return len(self.targets)


def to_tensors(data: TrainData, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Tensors sharing memory with the arrays on the CPU (a copy only for another device)."""
    inputs = [torch.from_numpy(a).to(device) for a in data.arrays]
    return inputs, torch.from_numpy(data.targets).to(device)


def _check_targets(targets: np.ndarray, task: str, name: str) -> None:
    if task == "classification":
        if targets.dtype.kind not in "iub":
            raise DataError(
                f"{name} targets must be integer class indices for classification, "
                f"got {targets.dtype}"
            )
        if targets.size and targets.min() < 0:
            raise DataError(f"{name} targets contain a negative class index")
    else:
        if targets.dtype.kind not in "iuf":
            raise DataError(f"{name} targets must be numeric for regression, got {targets.dtype}")
        if targets.dtype.kind == "f" and not np.all(np.isfinite(targets)):
            raise DataError(f"{name} targets contain NaN or inf")


def validate(task: str, data: TrainData, name: str) -> None:
    """A known task and targets that fit it, checked before any training work."""
    if task not in TASKS:
        raise ParameterError(f"task must be one of {TASKS}, got {task!r}")
    _check_targets(data.targets, task, name)


def epoch_order(
    rows: int, epoch: int, generator: torch.Generator, sampler: object | None
) -> torch.Tensor:
    """This epoch's row order: the seeded generator's, or this rank's shard under DDP."""
    if sampler is not None:
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return torch.tensor(list(iter(sampler)), dtype=torch.long)  # type: ignore[call-overload]
    return torch.randperm(rows, generator=generator)


def batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive index slices of ``order``; the last one may be short."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
