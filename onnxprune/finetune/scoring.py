"""Losses and eval metrics shared by the training loop and ``evaluate``.

Both go through ``metric_sums`` with the same batching, so the best metric the trainer
reports equals what ``evaluate`` measures afterwards, to the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DataError, ParameterError
from ..labels import Task
from .data import TrainData, to_tensors, validate

EVAL_BATCH_SIZE = 1024
_PROB_FLOOR = 1e-12


def first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Multi-output modules are trained on their first output."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _align_regression(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Match (N, 1) predictions to (N,) targets (and similar squeezes)."""
    if output.shape != target.shape:
        if output.numel() != target.numel():
            raise DataError(
                f"model output shape {tuple(output.shape)} does not fit target shape "
                f"{tuple(target.shape)}"
            )
        output = output.reshape(target.shape)
    return output


def _check_classes(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.dim() != 2:
        raise DataError(
            f"classification needs (N, classes) model outputs, got shape {tuple(output.shape)}"
        )
    classes = max(2, output.shape[1])  # one unit: a binary classifier, classes 0 and 1
    if target.numel() and int(target.max()) >= classes:
        raise DataError(
            f"class index {int(target.max())} is out of range for a model with "
            f"{output.shape[1]} output(s)" + (" (one unit: binary, 0 or 1)" if classes == 2 else "")
        )


def _classify(
    output: torch.Tensor, target: torch.Tensor, probs: bool, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, predicted classes); ``probs``: the output is already probabilities.
    One output unit is a binary classifier: binary cross-entropy, class 1 above 0.5
    (probabilities) or 0 (logits)."""
    _check_classes(output, target)
    if output.shape[1] == 1:
        score, truth = output[:, 0], target.to(output.dtype)
        if probs:
            p = score.clamp(_PROB_FLOOR, 1 - _PROB_FLOOR)
            loss = nn.functional.binary_cross_entropy(p, truth, reduction=reduction)
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(score, truth, reduction=reduction)
        return loss, (score > (0.5 if probs else 0.0)).long()
    target = target.long()
    if probs:
        log_probs = torch.log(output.clamp_min(_PROB_FLOOR))
        loss = nn.functional.nll_loss(log_probs, target, reduction=reduction)
    else:
        loss = nn.functional.cross_entropy(output, target, reduction=reduction)
    return loss, output.argmax(dim=1)


def loss_of(output: torch.Tensor, target: torch.Tensor, task: str, probs: bool) -> torch.Tensor:
    """Cross-entropy (on probabilities when ``probs``; binary for one unit) or MSE, batch
    mean."""
    if task == "classification":
        return _classify(output, target, probs)[0]
    target = target.to(output.dtype)
    return nn.functional.mse_loss(_align_regression(output, target), target)


def metric_sums(
    module: nn.Module,
    inputs: list[torch.Tensor],
    targets: torch.Tensor,
    task: str,
    batch_size: int,
    indices: torch.Tensor | None = None,
    probs: bool = False,
) -> tuple[float, float, float]:
    """(metric sum, loss sum, count) over ``indices`` (default all rows).

    The metric sum counts correct predictions or squared errors; the loss sum is the
    training loss summed per row (per element for regression), used to break ties.
    """
    metric_sum = 0.0
    loss_sum = 0.0
    count = 0.0
    rows = len(targets) if indices is None else len(indices)
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            if indices is None:
                part: slice | torch.Tensor = slice(start, start + batch_size)
            else:
                part = indices[start : start + batch_size]
            batch = [x[part] for x in inputs]
            target = targets[part]
            output = first_output(module(*batch))
            if task == "classification":
                loss, predicted = _classify(output, target, probs, reduction="sum")
                metric_sum += float((predicted == target.long()).sum())
                loss_sum += float(loss)
            else:
                target = target.to(torch.float64)
                output = _align_regression(output, target).to(torch.float64)
                metric_sum += float(((output - target) ** 2).sum())
                loss_sum = metric_sum
            count += target.numel()
    return metric_sum, loss_sum, count


def evaluate(
    module: nn.Module,
    data: TrainData,
    task: Task,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str | torch.device = "cpu",
) -> float:
    """Accuracy (classification) or MSE (regression) of ``module`` on ``data``.

    The module is run in eval mode and its mode is restored. Uses the same batching as
    ``train``'s per-epoch evaluation, so the numbers match exactly.
    """
    validate(task, data, "eval")
    if batch_size < 1:
        raise ParameterError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = module.training
    module.eval()
    try:
        inputs, targets = to_tensors(data, device)
        # a module still ending in its Softmax/Sigmoid gives probabilities (a one-unit
        # binary classifier's class 1 is then above 0.5, not above 0)
        probs = bool(getattr(module, "ends_with_probabilities", False)) and not getattr(
            module, "return_logits", False
        )
        total, _, count = metric_sums(module, inputs, targets, task, batch_size, probs=probs)
    finally:
        module.train(was_training)
    return total / count
