"""ODF2NNA from a dataset (the paper's Algorithm 1): build, train, prune, refine.

1. a rectangular MLP, NL hidden layers of NU units, NU from equation (2) with NP = the
   training rows it is trained on (``mlp.hidden_units``), unless ``units`` is given;
2. trained with PyTorch (Adam, early stopping on a validation split of the training
   rows), exported to ONNX;
3. pruned for each epsilon (one observation pass), the units' std measured on the
   training rows;
4. refined: the pruned ONNX is retrained for ``refine_fraction`` (15%) of the epochs with
   the same optimizer, learning rate, batch size and loss, keeping the best epoch on the
   validation split. The test set is only ever used for the reported figures.

Missing values: NaN cells are imputed with the training column mean. The rule lives in
the exported model itself (IsNaN -> Where, then standardisation with the training mean
and std), so every ONNX file written takes raw features, NaN included. Inside the
pipeline, data handed to the pruner and the trainer is imputed by the same rule
beforehand (the model's outputs are identical either way), because pruning commands
refuse NaN data.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .. import progress
from ..errors import DataError, ModelError, ParameterError
from ..io import DataLike, _pick_labels, _read_arrays
from ..select import check_epsilon
from ..sweep_table import dense_architecture, sweep_row
from .odf2nna import odf2nna_sweep

if TYPE_CHECKING:
    from ..finetune.trainer import Task

REFINE_FRACTION = 0.15


@dataclass
class EpsilonRun:
    """One epsilon's pruned model (no retraining), refined model and report."""

    epsilon: float
    pruned: onnx.ModelProto
    refined: onnx.ModelProto
    report: dict


@dataclass
class DatasetResult:
    """The trained starting model, one run per epsilon, and the whole-run report."""

    original: onnx.ModelProto
    runs: list[EpsilonRun] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def read_table(data: DataLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (rows x columns, float32, NaN = missing) and targets of a tabular .npz."""
    arrays, source = _read_arrays(data)
    x = next((arrays[k] for k in ("x", "X", "input") if k in arrays), None)
    y = _pick_labels(arrays)
    if x is None or y is None:
        raise DataError(f"{what} data {source} needs arrays 'x' (or 'X') and 'y'")
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{what} features must be a non-empty 2-D table, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{what} features are not numeric ({x.dtype})")
    x = x.astype(np.float32)
    if np.isinf(x).any():
        raise DataError(f"{what} features contain inf (NaN marks a missing value; inf does not)")
    y = np.asarray(y)
    if len(y) != len(x):
        raise DataError(f"{what} data has {len(x)} feature rows but {len(y)} targets")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{what} targets contain NaN or inf")
    return x, y


def _targets(y: np.ndarray, task: Task, what: str) -> np.ndarray:
    if task == "regression":
        return y.astype(np.float32)
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise DataError(f"{what} targets are not whole numbers: cannot classify them")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{what} targets contain a negative class index")
    return labels


def odf2nna_from_dataset(
    train: DataLike,
    test: DataLike,
    epsilon: float | Sequence[float],
    *,
    layers: int = 3,
    units: int | None = None,
    epochs: int = 200,
    task: Task | None = None,
    activation: str = "relu",
    lr: float = 1e-3,
    batch_size: int = 32,
    patience: int | None = 20,
    refine_fraction: float = REFINE_FRACTION,
    validation_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    verbose: bool = True,
) -> DatasetResult:
    """Algorithm 1: train the starting MLP on ``train``, then prune and refine it for each
    epsilon; every figure in the report is measured on ``test``."""
    from ..mlp import export_mlp, train_mlp
    from ..report import carry_metadata
    from ..tabular import detect_task, split_dataset

    epsilons = [check_epsilon(e) for e in np.atleast_1d(np.asarray(epsilon, dtype=object))]
    if not 0 < refine_fraction <= 1:
        raise ParameterError(f"refine fraction must be in (0, 1], got {refine_fraction}")
    if epochs < 1:
        raise ParameterError(f"epochs must be at least 1, got {epochs}")
    x_train, y_train = read_table(train, "training")
    x_test, y_test = read_table(test, "test")
    if x_test.shape[1] != x_train.shape[1]:
        raise DataError(
            f"test data has {x_test.shape[1]} features but training data {x_train.shape[1]}"
        )
    task = detect_task(y_train, task)
    y_train, y_test = _targets(y_train, task, "training"), _targets(y_test, task, "test")
    classes = int(max(y_train.max(), y_test.max())) + 1 if task == "classification" else None
    x_fit, x_val, y_fit, y_val = split_dataset(
        x_train, y_train, validation_fraction, seed=seed, stratify=task == "classification"
    )

    start = time.perf_counter()
    module, trained = train_mlp(
        x_fit,
        y_fit,
        x_val,
        y_val,
        task=task,
        num_layers=layers,
        num_units=units,
        num_classes=classes,
        activation=activation,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        patience=patience,
        seed=seed,
        device=device,
        progress=verbose,
    )
    train_s = time.perf_counter() - start
    num_features = x_train.shape[1]
    original = export_mlp(module.cpu(), num_features)
    impute = _imputer(module)
    fit_set = {"x": impute(x_fit), "y": y_fit}
    val_set = {"x": impute(x_val), "y": y_val}
    test_set = {"x": impute(x_test), "y": y_test}
    refine_epochs = max(1, math.ceil(refine_fraction * epochs - 1e-9))
    standardizer_params = 2 * num_features  # the imputation mean and the std in the graph

    result = DatasetResult(original)
    progress.info(f"pruning for epsilon {', '.join(f'{e:g}' for e in epsilons)}")
    pruned_all = odf2nna_sweep(original, epsilons, {"x": fit_set["x"]}, eval_data=test_set)
    for eps, (pruned, report) in zip(epsilons, pruned_all):
        progress.info(f"epsilon {eps:g}: refining for {refine_epochs} epoch(s)")
        refined, tuned = _refine(
            pruned,
            fit_set,
            val_set,
            task,
            epochs=refine_epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
        carry_metadata(refined, pruned)
        report["refine"] = tuned["finetune"]
        report.update(_test_metric(refined, test_set, "refined"))
        report["row"] = sweep_row(report, standardizer_params, original, pruned)
        result.runs.append(EpsilonRun(eps, pruned, refined, report))

    result.report = {
        "tool": "onnxprune",
        "method": "odf2nna-from-dataset",
        "task": task,
        "classes": classes,
        "features": num_features,
        "samples": {"train": len(x_fit), "validation": len(x_val), "test": len(x_test)},
        "missing_values": {
            "train": int(np.isnan(x_train).sum()),
            "test": int(np.isnan(x_test).sum()),
            "rule": "imputed with the training column mean inside the model",
        },
        "architecture": dense_architecture(original),
        "hidden_layers": layers,
        "units": int(module.layers[0].out_features) if layers else 0,
        "units_rule": "given" if units is not None else "equation (2), NP = training rows",
        "parameters_counted": "dense weights and biases (the 2*D standardisation constants "
        "in the graph are not counted)",
        "training": {
            "epochs": epochs,
            "epochs_run": trained.epochs_run,
            "best_epoch": trained.best_epoch,
            "stopped_early": trained.stopped_early,
            "patience": patience,
            "optimizer": "adam",
            "lr": lr,
            "batch_size": batch_size,
            "refine_epochs": refine_epochs,
            "seconds": train_s,
        },
        "rows_by_epsilon": [run.report["row"] for run in result.runs],
    }
    return result


def _refine(
    pruned: onnx.ModelProto, fit_set: dict, val_set: dict, task: Task, **options
) -> tuple[onnx.ModelProto, dict]:
    """The light retrain, with the training's loss: regression targets standardised.

    The starting MLP was trained on standardised targets and the scaling then folded into
    its output layer, whose weights are therefore in target units. Adam moves every weight
    by about lr per step whatever its size, so retraining on raw targets with tiny units
    (Ailerons: std 4e-4) would wreck those weights: unfold the scaling, retrain, fold back.
    """
    from ..finetune.round_trip import finetune
    from ..tabular import TargetScaling

    if task != "regression":
        return finetune(pruned, fit_set, val_set, optimizer="adam", **options)
    scaling = TargetScaling.fit(fit_set["y"])
    scaled = _scale_output(pruned, 1.0 / scaling.std, -scaling.mean / scaling.std)
    fit = {"x": fit_set["x"], "y": scaling.apply(fit_set["y"])}
    val = {"x": val_set["x"], "y": scaling.apply(val_set["y"])}
    tuned, report = finetune(scaled, fit, val, optimizer="adam", **options)
    report["finetune"]["targets"] = "standardised (MSE values in units of the target variance)"
    return _scale_output(tuned, scaling.std, scaling.mean), report


def _scale_output(model: onnx.ModelProto, scale: np.ndarray, shift: np.ndarray) -> onnx.ModelProto:
    """A copy whose output is ``scale * output + shift``, folded into the final Gemm."""
    from onnx import numpy_helper

    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    graph = scaled.graph
    node = next((n for n in graph.node if graph.output[0].name in n.output), None)
    inits = {init.name: init for init in graph.initializer}
    if node is None or node.op_type != "Gemm" or len(node.input) < 3:
        raise ModelError("cannot refine: the model's output is not a Gemm with a bias")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = numpy_helper.to_array(inits[node.input[1]])
    bias = numpy_helper.to_array(inits[node.input[2]])
    axis = 0 if attrs.get("transB", 0) else 1
    view = [1, 1]
    view[axis] = -1
    beta = float(attrs.get("beta", 1.0))
    new_weight = (weight * np.reshape(scale, view)).astype(weight.dtype)
    new_bias = ((beta * bias * scale + shift) / beta).astype(bias.dtype)
    for slot, value in ((1, new_weight), (2, new_bias)):
        name = f"{node.input[slot]}_rescaled"
        graph.initializer.append(numpy_helper.from_array(value, name))
        node.input[slot] = name
    used = {name for n in graph.node for name in n.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return scaled


def _imputer(module):
    """NaN -> training mean, exactly what the exported graph does first."""
    mean = module.mean.detach().cpu().numpy().astype(np.float32)

    def impute(x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), mean, x).astype(np.float32)

    return impute


def _test_metric(model: onnx.ModelProto, data: dict, suffix: str) -> dict[str, float]:
    from ..io import input_specs, load_data
    from ..metrics import evaluate

    dataset = load_data(data, input_specs(model), require_labels=True)
    return {f"{k}_{suffix}": v for k, v in evaluate(model, dataset, 1024).items()}


def default_prefix(train: str | os.PathLike) -> str:
    """Where the CLI writes by default: ``<train stem>.odf2nna`` beside the training file."""
    path = os.fspath(train)
    stem = os.path.splitext(path)[0]
    return f"{stem}.odf2nna"
