"""`onnxprune finetune`: train an ONNX model in PyTorch and write it back as ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from .. import progress
from . import main
from .common import check_outputs, default_output, handle_errors


@main.command(
    epilog="""\b
Examples:
  onnxprune finetune pruned.onnx --train train.npz --eval test.npz --epochs 3
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--train",
    "train_data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled training data (.npz with x and y).",
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(dir_okay=False),
    help="Labelled data to pick the best epoch and report accuracy / MSE.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Output path [default: <model>.finetuned.onnx beside the input].",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@handle_errors
def finetune(
    model, train_data, eval_data, output, epochs, lr, batch_size, optimizer, device, seed, force
) -> None:
    """Fine-tune MODEL (ONNX) in PyTorch and write it back as ONNX."""
    from ..finetune.round_trip import finetune as run_finetune
    from ..io import save_model

    output = Path(output) if output else default_output(model, "finetuned")
    check_outputs([output], force, model)
    tuned, report = run_finetune(
        model,
        train_data,
        eval_data,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        device=device,
    )
    save_model(tuned, output, force=force)
    for key, value in report.items():
        if key != "finetune":
            click.echo(f"{key}: {value:.4f}")
    progress.info(f"wrote {output}")
