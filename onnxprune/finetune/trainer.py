"""Train or fine-tune a torch module on in-memory arrays, deterministically.

One loop serves both ODF2NNA phases (training the starting MLP, the light retrain after
pruning) and fine-tuning of converted ONNX models. Design choices and why:

- The best epoch (by the eval metric, else by training loss) is restored at the end, so a
  late bad epoch never leaks into the exported model.
- Modules that end in Softmax (converted classifiers) are trained on logits when they can
  return them (``return_logits``), because cross-entropy on probabilities trains poorly;
  the Softmax stays in the exported graph. Otherwise NLL on log(clamped probabilities).
- Under ``torchrun`` (WORLD_SIZE > 1) the module is wrapped in DistributedDataParallel and
  each process reads its own shard; ``batch_size`` is per process. Evaluation is sharded
  and all-reduced, so every rank takes the same best-epoch and early-stopping decisions.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import DataError, ParameterError
from ..progress import info, track

Task = Literal["classification", "regression"]
TASKS = ("classification", "regression")
OPTIMIZERS = ("adam", "sgd")
EVAL_BATCH_SIZE = 1024
_PROB_FLOOR = 1e-12


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


@dataclass
class TrainResult:
    """What happened: per-epoch history and which epoch's weights the module now holds.

    ``metric`` is "accuracy" (higher is better) or "mse" when an eval set was given,
    else "train_loss"; ``best_metric`` is that metric at ``best_epoch`` (1-based).
    History rows: epoch, loss (mean training loss), eval_metric and eval_loss (None
    without an eval set).
    """

    history: list[dict[str, float | int | None]]
    best_epoch: int
    best_metric: float
    metric: str
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


# ----------------------------------------------------------------------------- helpers


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when distributed.

    Safe to call repeatedly. gloo serves CPU training, nccl CUDA.
    """
    if _distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return _distributed()


def _is_main_process() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _to_tensors(data: TrainData, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    inputs = [torch.from_numpy(a).to(device) for a in data.arrays]
    return inputs, torch.from_numpy(data.targets).to(device)


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Multi-output modules are trained on their first output."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


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


def _loss(output: torch.Tensor, target: torch.Tensor, task: str, probs: bool) -> torch.Tensor:
    if task == "classification":
        _check_classes(output, target)
        target = target.long()
        if probs:
            log_probs = torch.log(output.clamp_min(_PROB_FLOOR))
            return nn.functional.nll_loss(log_probs, target)
        return nn.functional.cross_entropy(output, target)
    target = target.to(output.dtype)
    return nn.functional.mse_loss(_align_regression(output, target), target)


def _metric_sums(
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
            output = _first_output(module(*batch))
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


def _validate(task: str, data: TrainData, name: str) -> None:
    if task not in TASKS:
        raise ParameterError(f"task must be one of {TASKS}, got {task!r}")
    _check_targets(data.targets, task, name)


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
    _validate(task, data, "eval")
    if batch_size < 1:
        raise ParameterError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = module.training
    module.eval()
    try:
        inputs, targets = _to_tensors(data, device)
        total, _, count = _metric_sums(module, inputs, targets, task, batch_size)
    finally:
        module.train(was_training)
    return total / count


def _make_optimizer(
    module: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ParameterError("the module has no trainable parameters")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _epoch_order(
    rows: int, epoch: int, generator: torch.Generator, sampler: object | None
) -> torch.Tensor:
    if sampler is not None:
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return torch.tensor(list(iter(sampler)), dtype=torch.long)  # type: ignore[call-overload]
    return torch.randperm(rows, generator=generator)


def _batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _improved(
    value: float, loss: float, best: float, best_loss: float, higher_is_better: bool
) -> bool:
    """Strictly better metric, or an equal metric with a lower loss.

    The tie-break matters for accuracy on small eval sets, which plateaus (e.g. at 1.0)
    while the eval loss still improves; it mirrors Keras' default of watching val_loss.
    """
    if math.isnan(value):
        return False
    if value == best:
        return loss < best_loss
    return value > best if higher_is_better else value < best


def _all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _check_options(
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    weight_decay: float,
    patience: int | None,
) -> None:
    if epochs < 1:
        raise ParameterError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ParameterError(f"learning rate must be > 0, got {lr}")
    if batch_size < 1:
        raise ParameterError(f"batch size must be >= 1, got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise ParameterError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if weight_decay < 0:
        raise ParameterError(f"weight decay must be >= 0, got {weight_decay}")
    if patience is not None and patience < 1:
        raise ParameterError(f"patience must be >= 1 (or None), got {patience}")


# ----------------------------------------------------------------------------- training


def train(
    module: nn.Module,
    train: TrainData,
    eval: TrainData | None,
    task: Task,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: Literal["adam", "sgd"] = "adam",
    weight_decay: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    momentum: float = 0.0,
    log_every: int = 1,
) -> TrainResult:
    """Train ``module`` in place and leave it holding its best epoch's weights.

    Loss: cross-entropy on logits (classification) or MSE (regression). After each epoch
    the eval set is scored (accuracy / MSE; ties broken by the eval loss); without one,
    the epoch's mean training loss decides. ``patience`` stops after that many epochs
    without improvement.
    Deterministic for a given ``seed`` (global torch seed, seeded shuffling, deterministic
    algorithms while training). The module's train/eval mode and ``return_logits`` flag
    are restored afterwards; the module stays on ``device``.
    """
    _check_options(epochs, lr, batch_size, optimizer, weight_decay, patience)
    _validate(task, train, "training")
    if eval is not None:
        _validate(task, eval, "eval")
    log_every = max(1, int(log_every))

    distributed = init_distributed(device)
    if distributed and str(device).startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch_device = torch.device(device)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    verbose = progress and rank == 0

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)

    ends_with_softmax = bool(getattr(module, "ends_with_softmax", False))
    has_logits_switch = hasattr(module, "return_logits")
    previous_logits = getattr(module, "return_logits", None)
    if ends_with_softmax and has_logits_switch:
        module.return_logits = True  # type: ignore[assignment]
    train_on_probs = task == "classification" and ends_with_softmax and not has_logits_switch
    was_training = module.training

    try:
        module.to(torch_device)
        net: nn.Module = module
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch_device.index] if torch_device.type == "cuda" else None
            net = DistributedDataParallel(module, device_ids=ids)
        opt = _make_optimizer(module, optimizer, lr, weight_decay, momentum)

        x_train, y_train = _to_tensors(train, torch_device)
        sampler = None
        if distributed:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(
                range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=seed
            )
        if eval is not None:
            x_eval, y_eval = _to_tensors(eval, torch_device)
            eval_shard = torch.arange(rank, len(eval), world) if distributed else None
            metric = "accuracy" if task == "classification" else "mse"
        else:
            metric = "train_loss"
        higher_is_better = metric == "accuracy"

        best = -math.inf if higher_is_better else math.inf
        best_loss = math.inf
        best_epoch = 0
        best_state: dict[str, torch.Tensor] | None = None
        history: list[dict[str, float | int | None]] = []
        since_best = 0
        stopped_early = False
        if verbose:
            info(
                f"training {epochs} epoch(s) on {len(train)} rows"
                + (f" x {world} processes" if distributed else "")
                + f", {optimizer} lr={lr:g}, batch {batch_size}, selecting by {metric}"
            )
        epoch_iter = range(1, epochs + 1)
        if verbose:
            epoch_iter = track(epoch_iter, "epochs", total=epochs)  # type: ignore[assignment]
        for epoch in epoch_iter:
            started = time.perf_counter()
            net.train()
            loss_sum = 0.0
            seen = 0
            for idx in _batches(_epoch_order(len(train), epoch, generator, sampler), batch_size):
                idx = idx.to(torch_device)
                batch = [x[idx] for x in x_train]
                target = y_train[idx]
                opt.zero_grad(set_to_none=True)
                output = _first_output(net(*batch))
                loss = _loss(output, target, task, train_on_probs)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            loss_sum, seen = _all_reduce_sums([loss_sum, float(seen)], torch_device)
            epoch_loss = loss_sum / seen

            eval_value: float | None = None
            if eval is not None:
                if distributed:
                    for buffer in module.buffers():  # ranks' BN stats drift apart
                        dist.broadcast(buffer, src=0)
                module.eval()
                sums = _metric_sums(
                    module, x_eval, y_eval, task, EVAL_BATCH_SIZE, eval_shard, train_on_probs
                )
                total, eval_loss_sum, count = _all_reduce_sums(list(sums), torch_device)
                eval_value = total / count
                eval_loss = eval_loss_sum / count
            else:
                eval_loss = epoch_loss
            score = eval_value if eval_value is not None else epoch_loss
            history.append(
                {
                    "epoch": epoch,
                    "loss": epoch_loss,
                    "eval_metric": eval_value,
                    "eval_loss": eval_loss if eval_value is not None else None,
                }
            )

            if best_state is None or _improved(score, eval_loss, best, best_loss, higher_is_better):
                best, best_loss, best_epoch, since_best = score, eval_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                since_best += 1
            if verbose and (epoch % log_every == 0 or epoch == epochs or epoch == 1):
                shown = f" {metric} {eval_value:.6g}" if eval_value is not None else ""
                info(
                    f"epoch {epoch}/{epochs} loss {epoch_loss:.6g}{shown}"
                    f" ({time.perf_counter() - started:.2f}s)"
                    + (" *" if best_epoch == epoch else "")
                )
            if patience is not None and since_best >= patience:
                stopped_early = True
                if verbose:
                    info(f"early stop at epoch {epoch}: no improvement for {patience} epoch(s)")
                break
        close = getattr(epoch_iter, "close", None)
        if close is not None:  # finish the progress bar now, not at garbage collection
            close()

        assert best_state is not None
        module.load_state_dict(best_state)
        if verbose:
            info(f"best epoch {best_epoch}: {metric} {best:.6g}")
        return TrainResult(history, best_epoch, float(best), metric, stopped_early)
    finally:
        module.train(was_training)
        if ends_with_softmax and has_logits_switch:
            module.return_logits = previous_logits  # type: ignore[assignment]
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
