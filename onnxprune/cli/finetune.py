"""`onnxprune finetune`: train an ONNX model in PyTorch and write it back as ONNX.

Under ``torchrun`` every process trains its shard (DistributedDataParallel); only rank 0
prints and writes the output, the other ranks stay silent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from .. import progress
from ..errors import DataError
from . import main
from .common import check_outputs, default_output, handle_errors, training_options


def _labelled(
    data: str | None, labels: str | None, flag: str
) -> str | dict[str, np.ndarray] | None:
    """Pair an unlabelled ``.npy`` (memory-mapped, never read whole) with its labels file."""
    if data is None:
        return None
    if labels is None:
        if Path(data).suffix == ".npy":
            raise DataError(f"{data} holds inputs only: give its labels with {flag} LABELS.npy")
        return data
    if Path(data).suffix != ".npy" or Path(labels).suffix != ".npy":
        raise DataError(f"{flag} pairs a .npy of inputs with a .npy of labels")
    arrays = {}
    for key, path in (("x", data), ("y", labels)):
        if not Path(path).is_file():
            raise DataError(f"data file not found: {path}")
        try:
            arrays[key] = np.load(path, mmap_mode="r" if key == "x" else None, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"cannot read {path}: {type(exc).__name__}") from exc
    return arrays


def _show(report: dict) -> None:
    """The eval metric after (and before) fine-tuning, and the epoch that was kept."""
    tuned = report["finetune"]
    for metric in ("accuracy", "mse"):
        if f"{metric}_finetuned" in report:
            before = tuned.get("start", {}).get(metric)
            shown = "" if before is None else f" (before: {before:.6g})"
            click.echo(f"{metric}_finetuned: {report[f'{metric}_finetuned']:.6g}{shown}")
    click.echo(f"best epoch: {tuned['best_epoch']} of {tuned['epochs_run']} ({tuned['metric']})")


@main.command(
    epilog="""\b
Examples:
  onnxprune finetune pruned.onnx --train train.npz --eval test.npz --epochs 3
  onnxprune finetune pruned.onnx --train x.npy --train-labels y.npy --optimizer sgd --lr 0.01
  onnxprune finetune pruned.onnx --train train.npz --schedule cosine --warmup 0.05
  torchrun --nproc_per_node 2 --no-python onnxprune finetune pruned.onnx --train train.npz
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--train",
    "train_data",
    required=True,
    type=click.Path(),
    help="Labelled training data: .npz with x and y, a .npy with --train-labels, or an "
    "image folder with one subfolder per class.",
)
@click.option(
    "--train-labels",
    type=click.Path(dir_okay=False),
    help="Labels (.npy) for a --train .npy, which is then memory-mapped, not loaded.",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(),
    help="Labelled data (same forms as --train) to pick the best epoch and report accuracy/MSE.",
)
@click.option("--eval-labels", type=click.Path(dir_okay=False), help="Labels for a --eval .npy.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Output path [default: <model>.finetuned.onnx beside the input].",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write the fine-tune report (settings, per-epoch history, metrics) as JSON here.",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Per process.")
@training_options
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda trains on the GPU when torch sees one, else a notice and the CPU.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@handle_errors
def finetune(
    model,
    train_data,
    train_labels,
    eval_data,
    eval_labels,
    output,
    report_path,
    epochs,
    lr,
    batch_size,
    optimizer,
    weight_decay,
    momentum,
    schedule,
    warmup,
    device,
    seed,
    force,
) -> None:
    """Fine-tune MODEL (ONNX) in PyTorch and write it back as ONNX."""
    from ..finetune.round_trip import finetune as run_finetune
    from ..io import atomic_write_bytes, load_model, save_model
    from ..report import carry_metadata

    if int(os.environ.get("RANK", "0")) != 0:
        progress.set_quiet(True)
    output = Path(output) if output else default_output(model, "finetuned")
    report = Path(report_path) if report_path else None
    check_outputs([output, report], force, model)
    source = load_model(model)
    tuned, result = run_finetune(
        source,
        _labelled(train_data, train_labels, "--train-labels"),
        _labelled(eval_data, eval_labels, "--eval-labels"),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        momentum=momentum,
        schedule=schedule,
        warmup=warmup,
        seed=seed,
        device=device,
        measure_start=True,
    )
    if tuned is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    carry_metadata(tuned, source)
    save_model(tuned, output, force=force)
    if report is not None:
        result = dict(result, model=str(model), output=str(output))
        payload = json.dumps(result, indent=2, default=float).encode()
        atomic_write_bytes(report, payload, force=force)
    _show(result)
    progress.info(f"wrote {output}" + (f" and {report}" if report else ""))
