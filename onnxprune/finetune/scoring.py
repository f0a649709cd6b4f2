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
    if target.numel() and int(target.max()) >= output.shape[1]:
        raise DataError(
            f"class index {int(target.max())} is out of range for a model with "
            f"{output.shape[1]} outputs"
        )


def loss_of(output: torch.Tensor, target: torch.Tensor, task: str, probs: bool) -> torch.Tensor:
    """Cross-entropy (NLL on log-probabilities when ``probs``) or MSE, batch mean."""
    if task == "classification":
        _check_classes(output, target)
        target = target.long()
        if probs:
            log_probs = torch.log(output.clamp_min(_PROB_FLOOR))
            return nn.functional.nll_loss(log_probs, target)
        return nn.functional.cross_entropy(output, target)
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
                _check_classes(output, target)
                target = target.long()
                metric_sum += float((output.argmax(dim=1) == target).sum())
                if probs:
                    log_probs = torch.log(output.clamp_min(_PROB_FLOOR))
                    loss_sum += float(nn.functional.nll_loss(log_probs, target, reduction="sum"))
                else:
                    loss_sum += float(nn.functional.cross_entropy(output, target, reduction="sum"))
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
        total, _, count = metric_sums(module, inputs, targets, task, batch_size)
    finally:
        module.train(was_training)
    return total / count
