"""Stage `finetune`: pruned ONNX -> trainable torch module -> a few epochs -> ONNX again."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .. import progress
from ..errors import ParameterError
from ..io import DataLike, Dataset, input_specs, load_data, load_model
from ..metrics import evaluate, task_of
from ..verify import verify


def _train_data(dataset: Dataset):
    from .trainer import TrainData

    arrays = tuple(np.asarray(dataset.arrays[s.name], dtype=s.dtype) for s in dataset.specs)
    return TrainData(arrays[0] if len(arrays) == 1 else arrays, np.asarray(dataset.labels))


def finetune(
    model: str | os.PathLike | onnx.ModelProto,
    train_data: DataLike,
    eval_data: DataLike | None = None,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    seed: int = 0,
    device: str = "cpu",
) -> tuple[onnx.ModelProto, dict]:
    """Train ``model`` on labelled data and return it as ONNX with the same interface.

    Keeps the best epoch by the eval metric (accuracy or MSE), or by training loss.
    """
    if epochs < 1:
        raise ParameterError(f"epochs must be at least 1, got {epochs}")
    if optimizer not in ("adam", "sgd"):
        raise ParameterError(f"optimizer must be adam or sgd, got {optimizer!r}")
    import torch

    from .convert import onnx_to_torch
    from .export import export_onnx
    from .trainer import train

    original = load_model(model)
    specs = input_specs(original)
    train_set = load_data(train_data, specs, require_labels=True)
    eval_set = None if eval_data is None else load_data(eval_data, specs, require_labels=True)
    task = task_of(np.asarray(train_set.labels))
    module = onnx_to_torch(original)
    progress.info(f"fine-tuning for {epochs} epoch(s) on {len(train_set)} samples ({task})")
    result = train(
        module,
        _train_data(train_set),
        None if eval_set is None else _train_data(eval_set),
        task,
        epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        device=device,
    )
    module = module.cpu().eval()
    feed = next(train_set.batches(2))
    example = tuple(torch.from_numpy(feed[s.name]) for s in specs)
    tuned = export_onnx(module, example, module.input_names, module.output_names, module.opset)
    verify(tuned, original, feed)
    report = {
        "finetune": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "optimizer": optimizer,
            "best_epoch": result.best_epoch,
            "history": result.history,
        }
    }
    if eval_set is not None:
        for metric, value in evaluate(tuned, eval_set, batch_size).items():
            report[f"{metric}_finetuned"] = value
    return tuned, report
