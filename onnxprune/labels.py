"""What a data file's ``y`` means for a model: class indices or regression targets.

Integer labels are classes. Users also bring classes in two other forms: one-hot rows
(Keras' ``to_categorical``) and whole numbers stored as floats (a pandas column, MATLAB
exports). Both are read as classes when the model's first output has one column per
class; any other float labels are regression targets, which must then have as many
values per sample as the output. A classifier with one output unit is binary (classes 0
and 1, its score thresholded at ``binary_threshold``); behind a Sigmoid, float labels of
only 0 and 1 are its classes too.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import onnx

from .errors import DataError
from .io import Dataset
from .observe import predict

Task = Literal["classification", "regression"]


def is_one_hot(labels: np.ndarray) -> bool:
    """Rows of zeros with exactly one 1, at least two columns."""
    if labels.ndim != 2 or labels.shape[1] < 2 or not np.issubdtype(labels.dtype, np.number):
        return False
    return bool(np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all())


def resolve_labels(
    labels: np.ndarray, width: int | None, sigmoid_unit: bool = False
) -> tuple[Task, np.ndarray]:
    """(task, labels) for a model whose first output has ``width`` values per sample
    (None: unknown); class labels come back as int64 indices. ``sigmoid_unit``: the model
    is one unit behind a Sigmoid, so float labels of only 0 and 1 are its two classes."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:  # a pandas/boolean mask column: classes 0 and 1
        labels = labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.integer) and not is_one_hot(labels):
        return "classification", labels
    if is_one_hot(labels) and width in (None, labels.shape[1]):
        return "classification", labels.argmax(axis=1).astype(np.int64)
    flat = labels.reshape(len(labels), -1)
    if sigmoid_unit and width == 1 and flat.shape[1] == 1 and np.isin(flat, (0, 1)).all():
        return "classification", flat[:, 0].astype(np.int64)
    if (
        width is not None
        and width > 1
        and flat.shape[1] == 1
        and np.issubdtype(labels.dtype, np.floating)
        and np.all(np.mod(flat, 1) == 0)
        and flat.min() >= 0
        and flat.max() < width
    ):
        return "classification", flat[:, 0].astype(np.int64)
    if width is not None and flat.shape[1] != width:
        raise DataError(
            f"labels 'y' have {flat.shape[1]} value(s) per sample but the model's first "
            f"output has {width}: give class indices (int64), one-hot rows, or one target "
            "per output value"
        )
    return "regression", labels


#: Ops between a classifier's last activation and its output that do not change values.
_VALUE_PRESERVING = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def ends_in_sigmoid(model: onnx.ModelProto) -> bool:
    """True when the first output is a Sigmoid's (probabilities), through value-preserving
    ops."""
    producers = {name: node for node in model.graph.node for name in node.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in _VALUE_PRESERVING:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Sigmoid"


def binary_threshold(model: onnx.ModelProto) -> float:
    """Where a one-unit binary classifier's first output turns to class 1: 0.5 after a
    final Sigmoid (probabilities), else 0 (a logit)."""
    return 0.5 if ends_in_sigmoid(model) else 0.0


def model_labels(
    model: onnx.ModelProto, labels: np.ndarray, width: int | None
) -> tuple[Task, np.ndarray]:
    """``resolve_labels`` for ``model``, whose first output has ``width`` values per sample."""
    return resolve_labels(labels, width, width == 1 and ends_in_sigmoid(model))


def predicted_classes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The class of each row of (N, C) scores: the largest, or for one unit (a binary
    classifier) 1 where the score is above ``threshold``."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > threshold).astype(np.int64)
    return scores.argmax(axis=1)


def output_width(model: onnx.ModelProto, dataset: Dataset, batch_size: int = 64) -> int:
    """Values per sample in ``model``'s first output, from one run on ``dataset``."""
    first = dataset.subset(dataset.batch_size(1))
    outputs = predict(model, first, batch_size)
    return int(np.prod(outputs.shape[1:], dtype=np.int64))


def labelled_for(
    model: onnx.ModelProto, train: Dataset, *others: Dataset | None
) -> tuple[Task, list[Dataset | None]]:
    """The task ``train``'s labels give ``model``, and ``train`` and ``others`` with class
    labels as int64 indices (one probe run of the model for all of them)."""
    width = output_width(model, train)
    task, labels = model_labels(model, np.asarray(train.labels), width)
    resolved: list[Dataset | None] = [_with_labels(train, labels)]
    for dataset in others:
        if dataset is not None:
            dataset = _with_labels(
                dataset, model_labels(model, np.asarray(dataset.labels), width)[1]
            )
        resolved.append(dataset)
    return task, resolved


def _with_labels(dataset: Dataset, labels: np.ndarray) -> Dataset:
    """``dataset`` itself, or a shallow copy carrying the resolved ``labels``."""
    if labels is dataset.labels:
        return dataset
    resolved = copy.copy(dataset)
    resolved.labels = labels
    return resolved
