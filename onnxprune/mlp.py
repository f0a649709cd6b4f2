"""ODF2NNA's starting model (Algorithm 1): a rectangular MLP sized from the dataset.

The paper sizes NL hidden layers of NU units so that its parameter count (its equation
(1)) matches the number of training examples, trains it (Adam, early stopping), and then
prunes it. Here the model takes RAW features: NaN imputation and standardisation live in
the module as buffers, so the exported ONNX graph (IsNaN -> Where -> Sub -> Div -> Gemm ...)
runs on the raw data without any preprocessing outside the model.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from .errors import ParameterError
from .finetune.trainer import Task, TrainData, TrainResult, train
from .tabular import Standardizer, TargetScaling, as_features, detect_task, split_dataset

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


# ----------------------------------------------------------------------------- sizing


def hidden_units(num_train_rows: int, num_features: int, num_classes: int, num_layers: int) -> int:
    """Units per hidden layer, the paper's equation (2): NU = (NP - NC) / (D + NL (NC + 1)).

    NP = training examples (the paper sets the parameter budget to the example count),
    D = input width, NC = classes (1 for single-output regression), NL = hidden layers.
    The paper gives no rounding; we floor (so the equation-(1) count stays <= NP) and
    return at least 1. Note equation (1) ignores hidden-to-hidden weights, so for NL > 1
    the real parameter count of the built MLP is larger than NP (see ``count_parameters``).
    """
    for name, value in (
        ("number of training rows", num_train_rows),
        ("number of features", num_features),
        ("number of classes", num_classes),
        ("number of layers", num_layers),
    ):
        if int(value) != value or value < 1:
            raise ParameterError(f"{name} must be a positive integer, got {value}")
    units = (num_train_rows - num_classes) // (num_features + num_layers * (num_classes + 1))
    return max(1, int(units))


def mlp_parameter_count(num_features: int, num_outputs: int, num_layers: int, units: int) -> int:
    """Real weights + biases of the rectangular MLP (what ONNX reports), for comparison."""
    if num_layers == 0:
        return num_features * num_outputs + num_outputs
    first = num_features * units + units
    middle = (num_layers - 1) * (units * units + units)
    return first + middle + units * num_outputs + num_outputs


# ----------------------------------------------------------------------------- data


# ----------------------------------------------------------------------------- model


class MLP(nn.Module):
    """Rectangular MLP on raw features: impute NaN, standardise, hidden layers, output.

    Outputs logits for classification (one per class) or the prediction(s) for
    regression. The layer stack is a plain ``nn.Sequential`` so the ONNX export is the
    Gemm -> activation chain the ODF2NNA pruner expects.
    """

    def __init__(
        self,
        num_features: int,
        num_outputs: int,
        num_layers: int,
        num_units: int,
        activation: str = "relu",
        standardizer: Standardizer | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ParameterError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        for name, value, low in (
            ("number of features", num_features, 1),
            ("number of outputs", num_outputs, 1),
            ("number of layers", num_layers, 0),
            ("number of units", num_units, 1),
        ):
            if int(value) != value or value < low:
                raise ParameterError(f"{name} must be an integer >= {low}, got {value}")
        standardizer = standardizer or Standardizer.identity(num_features)
        if standardizer.num_features != num_features:
            raise ParameterError(
                f"standardizer has {standardizer.num_features} features, model {num_features}"
            )
        self.register_buffer("mean", torch.from_numpy(standardizer.mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(standardizer.std.astype(np.float32)))
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, num_units), ACTIVATIONS[activation]()]
            width = num_units
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)
        self.num_features = num_features
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.mean, x)
        return self.layers((x - self.mean) / self.std)

    @property
    def output_layer(self) -> nn.Linear:
        return self.layers[-1]  # type: ignore[return-value]


def build_mlp(
    num_features: int,
    num_outputs: int,
    num_layers: int,
    num_units: int,
    activation: str = "relu",
    standardizer: Standardizer | None = None,
) -> MLP:
    """The starting model; without a standardizer, NaN become 0 and no scaling happens."""
    return MLP(num_features, num_outputs, num_layers, num_units, activation, standardizer)


# ----------------------------------------------------------------------------- training


def _fold_target_scaling(module: MLP, scaling: TargetScaling) -> None:
    """Make the output layer predict raw targets: y = std * z + mean, still one Gemm."""
    layer = module.output_layer
    std = torch.as_tensor(scaling.std, dtype=layer.weight.dtype, device=layer.weight.device)
    mean = torch.as_tensor(scaling.mean, dtype=layer.bias.dtype, device=layer.bias.device)
    with torch.no_grad():
        layer.weight.mul_(std.reshape(-1, 1))
        layer.bias.mul_(std).add_(mean)


def train_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
    task: Task | None = None,
    num_layers: int = 3,
    num_units: int | None = None,
    num_classes: int | None = None,
    activation: str = "relu",
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 32,
    patience: int | None = 20,
    validation_fraction: float = 0.1,
    scale_targets: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[MLP, TrainResult]:
    """Build and train the Algorithm 1 starting MLP with Adam and early stopping.

    Defaults follow the paper where it speaks (Adam; early stopping, patience 20 for
    Spambase's 240 epochs, 50 for Pole's 1000) and Keras otherwise (batch 32, lr 1e-3),
    since the paper used Keras and states neither. Early stopping needs held-out data: if
    no eval set is given, ``validation_fraction`` of the training rows is split off
    (stratified) and never trained on; the test set must stay outside. ``num_units``
    defaults to equation (2) with NP = the rows actually trained on.

    Regression targets are standardised for training (``scale_targets``) and the scaling
    is folded into the output layer afterwards, so the returned module predicts raw
    targets; the TrainResult's MSE values are then in standardised units (raw MSE /
    target variance).
    """
    task = detect_task(y_train, task)
    x_train = as_features(x_train, "training features")
    y_train = np.asarray(y_train)
    if x_eval is None and y_eval is None:
        if validation_fraction > 0:
            x_train, x_eval, y_train, y_eval = split_dataset(
                x_train,
                y_train,
                validation_fraction,
                seed=seed,
                stratify=task == "classification",
            )
    elif x_eval is None or y_eval is None:
        raise ParameterError("give both x_eval and y_eval, or neither")
    if task == "classification":
        y_train = y_train.astype(np.int64)
        classes = int(y_train.max()) + 1 if num_classes is None else int(num_classes)
        outputs = classes
    else:
        y_train = y_train.astype(np.float32)
        classes = 1 if y_train.ndim == 1 else int(y_train.shape[1])
        outputs = classes
    num_features = x_train.shape[1]
    if num_units is None:
        num_units = hidden_units(len(x_train), num_features, classes, num_layers)

    standardizer = Standardizer.fit(x_train)
    torch.manual_seed(seed)  # weight initialisation is part of the seeded run
    module = build_mlp(num_features, outputs, num_layers, num_units, activation, standardizer)

    scaling = None
    if task == "regression" and scale_targets:
        scaling = TargetScaling.fit(y_train)
        y_train = scaling.apply(y_train)
    eval_data = None
    if x_eval is not None and y_eval is not None:
        x_eval = as_features(x_eval, "eval features", num_features)
        y_eval = np.asarray(y_eval)
        if task == "classification":
            y_eval = y_eval.astype(np.int64)
        else:
            y_eval = y_eval.astype(np.float32)
            if scaling is not None:
                y_eval = scaling.apply(y_eval)
        eval_data = TrainData(x_eval, y_eval)

    result = train(
        module,
        TrainData(x_train, y_train),
        eval_data,
        task,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer="adam",
        patience=patience,
        seed=seed,
        device=device,
        progress=progress,
    )
    if scaling is not None:
        _fold_target_scaling(module, scaling)
    module.eval()
    return module, result


# ----------------------------------------------------------------------------- export


def export_mlp(
    module: nn.Module,
    num_features: int,
    path: str | os.PathLike | None = None,
    force: bool = True,
) -> onnx.ModelProto:
    """Export to ONNX (opset 17, input "input" [batch, D] float32, output "output").

    The graph takes raw features, NaN included: IsNaN/Where impute the training means.
    Written atomically when ``path`` is given; the module's mode and device are restored.
    """
    from .io import save_model

    was_training = module.training
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (torch.zeros(1, num_features, dtype=torch.float32, device=device),),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    if path is not None:
        save_model(model, path, force=force)
    return model
