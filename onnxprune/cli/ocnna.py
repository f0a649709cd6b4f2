"""`onnxprune ocnna`: prune conv filters and dense units with OCNNA."""

from __future__ import annotations

from pathlib import Path

import click

from . import main
from .common import (
    check_outputs,
    check_suffix,
    data_options,
    default_output,
    distill_arguments,
    distill_options,
    finetune_pruned,
    handle_errors,
    k_tag,
    ocnna_options,
    output_options,
    run_options,
    training_options,
)
from .quantize import int8_path, quantize_option, save_with_int8


@main.command(
    epilog="""\b
Examples:
  onnxprune ocnna model.onnx --k 40 --data dvar.npz
  onnxprune ocnna model.onnx --k 40 --data dvar.npz --eval test.npz -o small.onnx --report r.json
  onnxprune ocnna model.onnx --k 40 --data dvar.npz --finetune train.npz --quantize int8
  onnxprune ocnna model.keras --k 40 --data dvar.npz --finetune train.npz --framework keras
"""
)
@click.argument("model", type=click.Path())  # a directory: a TensorFlow SavedModel
@click.option(
    "--k",
    "k",
    type=float,
    default=40.0,
    show_default=True,
    help="Percentile of significance: drop k% of each group's channels, 0 <= k < 100.",
)
@data_options(
    "D_var samples (.npz with x/X, .npy, or an image folder) used to score channels.",
    "Labelled data (.npz with x and y): accuracy before and after.",
    folders=True,
)
@output_options("Pruned model path [default: <model>.ocnna-k<k>.onnx beside the input].")
@ocnna_options
@distill_options
@click.option(
    "--finetune",
    "finetune_data",
    type=click.Path(dir_okay=False),
    help="Labelled training data: fine-tune the pruned model after pruning (see --framework).",
)
@click.option("--epochs", type=int, default=1, show_default=True, help="Fine-tune epochs.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Fine-tune learning rate.")
@training_options
@click.option(
    "--framework",
    type=click.Choice(["torch", "keras"]),
    default="torch",
    show_default=True,
    help="Fine-tune in PyTorch (any ONNX model) or in Keras (MODEL is .keras/.h5/SavedModel).",
)
@quantize_option
@click.option(
    "--memory-budget",
    type=float,
    default=None,
    metavar="MB",
    help="Cap on activation memory while scoring; splits observation into passes if needed.",
)
@run_options
@handle_errors
def ocnna(
    model,
    k,
    data,
    eval_data,
    output,
    report_path,
    criterion,
    convs_only,
    round_to,
    compensate,
    reconstruct,
    keep,
    workers,
    distill,
    distill_lr,
    finetune_data,
    epochs,
    lr,
    optimizer,
    weight_decay,
    momentum,
    schedule,
    warmup,
    framework,
    batch_size,
    device,
    seed,
    force,
    quantize,
    memory_budget,
) -> None:
    """Prune conv filters (and dense units) of MODEL with OCNNA."""
    from ..methods.ocnna import ocnna as run_ocnna
    from ..select import check_k

    check_k(k)
    output = Path(output) if output else default_output(model, f"ocnna-{k_tag(k)}")
    report = Path(report_path) if report_path else None
    check_suffix(output, ".onnx", "the output model")
    check_suffix(report, ".json", "the report (a Markdown copy goes beside it)")
    check_outputs([output, report, int8_path(output) if quantize else None], force, model)
    keras_finetune = finetune_data is not None and framework == "keras"
    distilling = distill_arguments(distill, distill_lr, keras_finetune)
    if keras_finetune:  # the same pruning, plus the user's Keras model rebuilt to match
        from ..keras import ocnna as run_ocnna
    result = run_ocnna(
        model,
        k,
        data,
        eval_data=eval_data,
        criterion=criterion,
        convs_only=convs_only,
        batch_size=batch_size,
        device=device,
        round_to=round_to,
        seed=seed,
        compensate=compensate,
        reconstruct=reconstruct,
        memory_budget=memory_budget,
        workers=workers,
        keep=keep,
        **distilling,
    )
    if finetune_data is not None and not finetune_pruned(
        result,
        framework,
        finetune_data,
        eval_data,
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
    ):
        return  # a torchrun rank other than 0: rank 0 writes the outputs
    int8 = None
    if quantize == "int8":
        from ..quantize import add_int8

        int8 = add_int8(result, data, eval_data=eval_data, batch_size=batch_size)
    save_with_int8(result, int8, output, report, force)
