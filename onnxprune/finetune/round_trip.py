"""Stage `finetune`: pruned ONNX -> trainable torch module -> a few epochs -> ONNX again.

Why it is shaped this way:

- Data stays in its stored dtype (uint8 images stay uint8, a memory-mapped ``.npy`` stays
  mapped); ``_CastInputs`` casts each batch to the model's input types on the fly, so the
  training set never needs a float32 copy in RAM.
- Under ``torchrun`` the trainer runs DistributedDataParallel; afterwards only rank 0
  exports, verifies and evaluates, and the process group this function created is closed
  so the other ranks can leave. Other ranks get ``None`` instead of a model.
- The exported model keeps the input/output names, gets a dynamic batch axis and opset
  max(original, 13), and passes the same ``verify`` as a pruned model.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.distributed as dist
from torch import nn

from .. import progress
from ..errors import ParameterError
from ..io import DataLike, Dataset, input_specs, load_data, load_model
from ..labels import labelled_for
from ..metrics import count_params, evaluate
from ..pipeline import PruneResult
from ..report import carry_metadata
from ..verify import verify

METADATA_KEY = "onnxprune.finetune"
DEVICES = ("cpu", "cuda")


class _CastInputs(nn.Module):
    """Casts stored-dtype batches (e.g. uint8 pixels) to the model's input dtypes.

    Exposes the wrapped module's ``ends_with_probabilities`` / ``return_logits`` so the
    trainer still trains a Softmax- or Sigmoid-ended classifier on its logits.
    """

    def __init__(self, module: nn.Module, dtypes: Sequence[torch.dtype]) -> None:
        super().__init__()
        self.module = module
        self.dtypes = tuple(dtypes)

    @property
    def ends_with_probabilities(self) -> bool:
        return bool(getattr(self.module, "ends_with_probabilities", False))

    @property
    def return_logits(self) -> bool:
        return bool(self.module.return_logits)

    @return_logits.setter
    def return_logits(self, value: bool) -> None:
        self.module.return_logits = value

    def forward(self, *inputs: torch.Tensor):
        return self.module(*(x.to(dtype) for x, dtype in zip(inputs, self.dtypes)))


def _train_data(dataset: Dataset):
    """Arrays as stored (memory maps stay maps); float64 becomes float32 in TrainData."""
    from .trainer import TrainData

    arrays = tuple(np.asarray(dataset.arrays[spec.name]) for spec in dataset.specs)
    return TrainData(arrays[0] if len(arrays) == 1 else arrays, np.asarray(dataset.labels))


def resolve_device(device: str) -> str:
    """``cuda`` when torch sees a GPU; otherwise a one-line notice and the CPU."""
    if device not in DEVICES:
        raise ParameterError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        if _rank() == 0:
            progress.info("notice: torch sees no CUDA device; fine-tuning on the CPU")
        return "cpu"
    return device


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _leave_process_group(owned: bool) -> bool:
    """After distributed training: True on ranks other than 0, which must stop here."""
    if not _in_process_group():
        return False
    rank = dist.get_rank()
    if owned:
        dist.barrier()
        dist.destroy_process_group()
    return rank != 0


def finetune(
    model: str | os.PathLike | onnx.ModelProto,
    train_data: DataLike,
    eval_data: DataLike | None = None,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    schedule: str = "constant",
    warmup: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    measure_start: bool = False,
) -> tuple[onnx.ModelProto | None, dict]:
    """Train ``model`` on labelled data and return it as ONNX with the same interface.

    Cross-entropy for class labels (on logits when the model ends in Softmax; binary for
    one Sigmoid or logit unit), MSE for float targets; keeps the best epoch by the eval
    metric, or by training loss without eval data. ``optimizer`` is adam, adamw or sgd
    (with ``momentum``); ``schedule`` ("constant" or "cosine" decay to ~0, per step) and
    ``warmup`` (fraction of the steps of linear warm-up) shape the learning rate, so the
    original training's recipe can be repeated. The same seed, thread count and process
    count give a byte-identical model. ``measure_start`` adds the eval metric of ``model``
    itself (before training).
    Under torchrun, ranks other than 0 return ``(None, report)`` and must write nothing.
    """
    from .convert import onnx_to_torch
    from .export import export_onnx
    from .trainer import check_options, train

    check_options(epochs, lr, batch_size, optimizer, weight_decay, None, schedule, warmup, momentum)
    device = resolve_device(device)
    main_rank = _rank() == 0
    original = load_model(model)
    specs = input_specs(original)
    train_set = load_data(train_data, specs, require_labels=True)
    eval_set = None if eval_data is None else load_data(eval_data, specs, require_labels=True)
    task, (train_set, eval_set) = labelled_for(original, train_set, eval_set)
    settings = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "schedule": schedule,
        "warmup": warmup,
        "seed": seed,
        "device": device,
    }
    report: dict = {"finetune": dict(settings, task=task, train_samples=len(train_set))}
    if measure_start and eval_set is not None and main_rank:
        report["finetune"]["start"] = evaluate(original, eval_set, batch_size)

    started = time.perf_counter()
    module = onnx_to_torch(original)
    dtypes = [torch.from_numpy(np.empty(0, spec.dtype)).dtype for spec in specs]
    owns_group = not _in_process_group()  # else the caller's group: theirs to close
    with warnings.catch_warnings():
        # read-only memory maps are only ever read; torch warns about them anyway
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        result = train(
            _CastInputs(module, dtypes),
            _train_data(train_set),
            None if eval_set is None else _train_data(eval_set),
            task,  # type: ignore[arg-type]
            epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,  # type: ignore[arg-type]
            weight_decay=weight_decay,
            momentum=momentum,
            schedule=schedule,  # type: ignore[arg-type]
            warmup=warmup,
            seed=seed,
            device=device,
            progress=main_rank,
        )
    report["finetune"].update(
        processes=int(os.environ.get("WORLD_SIZE", "1")),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        metric=result.metric,
        best_metric=result.best_metric,
        history=result.history,
        train_s=time.perf_counter() - started,
    )
    if _leave_process_group(owns_group):
        return None, report

    module = module.cpu().eval()
    feed = next(train_set.batches(2))
    example = tuple(torch.from_numpy(feed[spec.name]) for spec in specs)
    tuned = export_onnx(module, example, module.input_names, module.output_names, module.opset)
    verify(tuned, original, feed)
    tuned.metadata_props.add(key=METADATA_KEY, value=repr(settings | {"best": result.best_epoch}))
    report["finetune"]["params"] = count_params(tuned)
    if eval_set is not None:
        for metric, value in evaluate(tuned, eval_set, batch_size).items():
            report[f"{metric}_finetuned"] = value
    return tuned, report


def finetune_result(
    result: PruneResult, train_data: DataLike, eval_data: DataLike | None = None, **settings
) -> bool:
    """Fine-tune a pruning result in place: its model becomes the trained export (keeping
    the pruning provenance) and its report gains the fine-tune block. ``settings`` are
    ``finetune``'s. False on a torchrun rank other than 0, which writes nothing."""
    tuned, extra = finetune(result.model, train_data, eval_data, **settings)
    if tuned is None:
        return False
    carry_metadata(tuned, result.model)
    result.model = tuned
    result.report.update(extra)
    return True
