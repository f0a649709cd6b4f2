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
- The learning rate follows a per-step schedule (``optim.LRSchedule``): a fine-tune of a
  pruned model starts from good weights, so a warm-up avoids wrecking them with the first
  large Adam steps and a cosine decay ends near 0, as the original training ended.

The pieces live beside this file: ``data`` (TrainData, batching), ``scoring`` (losses,
``evaluate``), ``optim`` (optimizer, schedule, option checks), ``distributed``. Their public
names are re-exported here, the import path used across onnxprune.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..labels import Task
from ..progress import info, track
from .data import TASKS, TrainData, batches, epoch_order, to_tensors, validate
from .distributed import all_reduce_sums, init_distributed, is_main_process
from .optim import (
    OPTIMIZERS,
    SCHEDULES,
    LRSchedule,
    Optimizer,
    Schedule,
    check_options,
    make_optimizer,
)
from .scoring import EVAL_BATCH_SIZE, evaluate, first_output, loss_of, metric_sums

__all__ = [
    "EVAL_BATCH_SIZE",
    "OPTIMIZERS",
    "SCHEDULES",
    "TASKS",
    "LRSchedule",
    "Optimizer",
    "Schedule",
    "StepHook",
    "Task",
    "TrainData",
    "TrainResult",
    "check_options",
    "evaluate",
    "init_distributed",
    "is_main_process",
    "train",
]

StepHook = Callable[[int, float, float], None]
"""Called after every optimizer step with (1-based step, learning rate used, batch loss)."""


@dataclass
class TrainResult:
    """What happened: per-epoch history and which epoch's weights the module now holds.

    ``metric`` is "accuracy" (higher is better) or "mse" when an eval set was given,
    else "train_loss"; ``best_metric`` is that metric at ``best_epoch`` (1-based).
    History rows: epoch, loss (mean training loss), eval_metric and eval_loss (None
    without an eval set), lr (the learning rate of the epoch's last step).
    """

    history: list[dict[str, float | int | None]]
    best_epoch: int
    best_metric: float
    metric: str
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


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


def train(
    module: nn.Module,
    train: TrainData,
    eval: TrainData | None,
    task: Task,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: Optimizer = "adam",
    weight_decay: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    momentum: float = 0.0,
    log_every: int = 1,
    schedule: Schedule = "constant",
    warmup: float = 0.0,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train ``module`` in place and leave it holding its best epoch's weights.

    Loss: cross-entropy on logits (classification) or MSE (regression). After each epoch
    the eval set is scored (accuracy / MSE; ties broken by the eval loss); without one,
    the epoch's mean training loss decides. ``patience`` stops after that many epochs
    without improvement. ``schedule`` ("constant" or "cosine", per step over all epochs)
    and ``warmup`` (fraction of the steps, linear) shape the learning rate; ``on_step``
    sees every step's learning rate and loss.
    Deterministic for a given ``seed`` (global torch seed, seeded shuffling, deterministic
    algorithms while training). The module's train/eval mode and ``return_logits`` flag
    are restored afterwards; the module stays on ``device``.
    """
    check_options(
        epochs, lr, batch_size, optimizer, weight_decay, patience, schedule, warmup, momentum
    )
    validate(task, train, "training")
    if eval is not None:
        validate(task, eval, "eval")
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

    # a classifier trains on the logits under its final Softmax/Sigmoid when it can skip
    # it; a regressor keeps its output activation (targets in [0, 1] behind a Sigmoid)
    ends_with_probabilities = task == "classification" and bool(
        getattr(module, "ends_with_probabilities", False)
    )
    has_logits_switch = hasattr(module, "return_logits")
    previous_logits = getattr(module, "return_logits", None)
    if ends_with_probabilities and has_logits_switch:
        module.return_logits = True  # type: ignore[assignment]
    train_on_probs = ends_with_probabilities and not has_logits_switch
    was_training = module.training

    try:
        module.to(torch_device)
        net: nn.Module = module
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch_device.index] if torch_device.type == "cuda" else None
            net = DistributedDataParallel(module, device_ids=ids)
        opt = make_optimizer(module, optimizer, lr, weight_decay, momentum)

        x_train, y_train = to_tensors(train, torch_device)
        sampler = None
        if distributed:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(
                range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=seed
            )
        rows_here = len(sampler) if sampler is not None else len(train)
        plan = LRSchedule(lr, epochs * math.ceil(rows_here / batch_size), schedule, warmup)
        if eval is not None:
            x_eval, y_eval = to_tensors(eval, torch_device)
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
        step = 0
        step_lr = lr
        if verbose:
            shape = plan.describe()
            info(
                f"training {epochs} epoch(s) on {len(train)} rows"
                + (f" x {world} processes" if distributed else "")
                + f", {optimizer} lr={lr:g}"
                + (f" ({shape})" if shape else "")
                + f", batch {batch_size}, selecting by {metric}"
            )
        epoch_iter = range(1, epochs + 1)
        if verbose:
            epoch_iter = track(epoch_iter, "epochs", total=epochs)  # type: ignore[assignment]
        for epoch in epoch_iter:
            started = time.perf_counter()
            net.train()
            loss_sum = 0.0
            seen = 0
            for idx in batches(epoch_order(len(train), epoch, generator, sampler), batch_size):
                idx = idx.to(torch_device)
                batch = [x[idx] for x in x_train]
                target = y_train[idx]
                opt.zero_grad(set_to_none=True)
                output = first_output(net(*batch))
                loss = loss_of(output, target, task, train_on_probs)
                loss.backward()
                plan.apply(opt, step)
                opt.step()
                step += 1
                step_lr = float(opt.param_groups[0]["lr"])  # what the optimizer used
                batch_loss = float(loss.detach())
                if on_step is not None:
                    on_step(step, step_lr, batch_loss)
                loss_sum += batch_loss * len(idx)
                seen += len(idx)
            loss_sum, seen = all_reduce_sums([loss_sum, float(seen)], torch_device)
            epoch_loss = loss_sum / seen

            eval_value: float | None = None
            if eval is not None:
                if distributed:
                    for buffer in module.buffers():  # ranks' BN stats drift apart
                        dist.broadcast(buffer, src=0)
                module.eval()
                sums = metric_sums(
                    module, x_eval, y_eval, task, EVAL_BATCH_SIZE, eval_shard, train_on_probs
                )
                total, eval_loss_sum, count = all_reduce_sums(list(sums), torch_device)
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
                    "lr": step_lr,
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
        if ends_with_probabilities and has_logits_switch:
            module.return_logits = previous_logits  # type: ignore[assignment]
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
