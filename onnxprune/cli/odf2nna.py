"""`onnxprune odf2nna`: prune dense units of a trained model, or run Algorithm 1 on a dataset."""

from __future__ import annotations

from pathlib import Path

import click

from .. import progress
from ..errors import ParameterError
from . import main
from .common import (
    check_outputs,
    check_suffix,
    data_options,
    default_output,
    device_option,
    distill_arguments,
    distill_options,
    eps_tag,
    finetune_pruned,
    force_option,
    handle_errors,
    output_options,
    output_prefix,
    rollback_on_error,
    seed_option,
)
from .quantize import int8_path, quantize_option, save_with_int8


def parse_sweep(text: str) -> list[float]:
    """``0.002,0.01,0.1`` or ``start:stop:step`` ranges (stop included), mixed by commas."""
    from ..select import check_epsilon
    from ..sweep import parse_values

    return parse_values(text, check_epsilon, what="--sweep item", example="0.002,0.01")


@main.command(
    epilog="""\b
Examples:
  onnxprune odf2nna mlp.onnx --epsilon 0.05 --data eval.npz --eval test.npz -o small.onnx
  onnxprune odf2nna mlp.onnx --sweep 0.002,0.01,0.1,0.5 --data eval.npz --eval test.npz
  onnxprune odf2nna mlp.keras --epsilon 0.05 --data eval.npz --finetune train.npz \\
      --framework keras --no-bridge
  onnxprune odf2nna --train train.npz --test test.npz --layers 3 --epsilon 0.05 --epochs 200
  onnxprune odf2nna --train train.npz --test test.npz --sweep 0.1:0.9:0.2 -o out/spam
"""
)
@click.argument("model", required=False, type=click.Path())  # a directory: a SavedModel
@click.option("--epsilon", type=float, help="Keep units whose output std > epsilon (>= 0).")
@click.option("--sweep", help="Several epsilons: 0.002,0.01,0.1 or start:stop:step.")
@data_options("Samples to measure units (MODEL).", "Labelled test data.")
@click.option(
    "--train", "train_data", type=click.Path(dir_okay=False), help="Algorithm 1: training table."
)
@click.option(
    "--test", "test_data", type=click.Path(dir_okay=False), help="Algorithm 1: test table."
)
@click.option("--layers", type=int, default=3, show_default=True, help="Hidden layers (NL).")
@click.option("--units", type=int, help="Units per hidden layer [default: equation (2)].")
@click.option("--epochs", type=int, help="Training epochs [Algorithm 1: 200; --finetune: 3].")
@click.option(
    "--task",
    type=click.Choice(["auto", "classification", "regression"]),
    default="auto",
    show_default=True,
    help="auto: integer y = classification, float y = regression.",
)
@click.option(
    "--activation",
    type=click.Choice(["relu", "tanh", "sigmoid"]),
    default="relu",
    show_default=True,
)
@click.option("--patience", type=int, default=20, show_default=True, help="Early stop; 0 = off.")
@click.option(
    "--refine-fraction",
    type=float,
    default=0.15,
    show_default=True,
    help="Algorithm 1: refine for this fraction of --epochs.",
)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=int, help="[default: Algorithm 1: 32, pruning: 64]")
@click.option(
    "--finetune",
    "finetune_data",
    type=click.Path(dir_okay=False),
    help="MODEL: labelled training data to retrain the pruned model (PR column).",
)
@click.option(
    "--framework",
    type=click.Choice(["torch", "keras"]),
    default="torch",
    show_default=True,
    help="Fine-tune in PyTorch (any ONNX model) or in Keras (MODEL is .keras/.h5/SavedModel).",
)
@click.option("--no-bridge", is_flag=True, help="Keep one unit instead of removing a layer.")
@click.option(
    "--reconstruct",
    is_flag=True,
    help="Also refit the layers that lost inputs by least squares on --data (see ocnna).",
)
@distill_options
@quantize_option
@output_options("Output model [sweep / Algorithm 1: output prefix].", "JSON report.", prefix=True)
@device_option
@seed_option
@force_option
@handle_errors
def odf2nna(model, train_data, test_data, **options) -> None:
    """Prune dense units of MODEL with ODF2NNA, or build one from --train/--test (Algorithm 1)."""
    from ..select import check_epsilon

    if (options["epsilon"] is None) == (options["sweep"] is None):
        raise ParameterError("give exactly one of --epsilon and --sweep")
    if options["sweep"] is not None:
        epsilons = parse_sweep(options["sweep"])
    else:
        epsilons = [check_epsilon(options["epsilon"])]
    if options["quantize"] and (model is None or options["sweep"] is not None):
        raise ParameterError("--quantize works when pruning MODEL with one --epsilon")
    if options["distill"] and model is None:
        raise ParameterError("--distill works when pruning MODEL with --data")
    if model is not None:
        if train_data or test_data:
            raise ParameterError("give either MODEL with --data, or --train and --test")
        if options["data"] is None:
            raise ParameterError("pruning MODEL needs --data (samples to measure each unit)")
        _prune_model(model, epsilons, options)
    else:
        if not (train_data and test_data):
            raise ParameterError("give MODEL with --data, or --train and --test (Algorithm 1)")
        _from_dataset(train_data, test_data, epsilons, options)


def _prune_model(model: str, epsilons: list[float], options: dict) -> None:
    from ..io import save_model
    from ..methods.odf2nna import odf2nna_sweep
    from ..sweep_table import sweep_paths, sweep_row, to_markdown, write_sweep

    force = options["force"]
    sweep = options["sweep"] is not None
    if sweep and options["eval_data"] is None:
        raise ParameterError("--sweep needs --eval (labelled data for the table)")
    if sweep:
        prefix = output_prefix(options["output"], str(default_output(model, "odf2nna"))[:-5])
        outputs = [Path(f"{prefix}-{eps_tag(e)}.onnx") for e in epsilons]
        table = Path(options["report_path"] or f"{prefix}-sweep.json")
        reports = list(sweep_paths(table))
    else:
        outputs = [
            Path(options["output"] or default_output(model, f"odf2nna-{eps_tag(epsilons[0])}"))
        ]
        reports = [Path(options["report_path"])] if options["report_path"] else []
        check_suffix(outputs[0], ".onnx", "-o")
    check_suffix(
        Path(options["report_path"]) if options["report_path"] else None, ".json", "--report"
    )
    int8_output = int8_path(outputs[0]) if options["quantize"] else None
    check_outputs([*outputs, *reports, int8_output], force, model)
    epochs = options["epochs"] or 3
    batch_size = options["batch_size"] or 64
    keras_finetune = options["finetune_data"] is not None and options["framework"] == "keras"
    distilling = distill_arguments(options["distill"], options["distill_lr"], keras_finetune)
    if distilling:
        distilling["seed"] = options["seed"]
    if keras_finetune:  # the same pruning, plus the user's Keras model rebuilt to match
        from ..keras import odf2nna_sweep
    results = odf2nna_sweep(
        model,
        epsilons,
        options["data"],
        eval_data=options["eval_data"],
        batch_size=batch_size,
        device=options["device"],
        bridge=not options["no_bridge"],
        reconstruct=options["reconstruct"],
        **distilling,
    )
    for result in results:
        if options["finetune_data"] is not None and not finetune_pruned(
            result,
            options["framework"],
            options["finetune_data"],
            options["eval_data"],
            epochs=epochs,
            lr=options["lr"],
            batch_size=batch_size,
            seed=options["seed"],
            device=options["device"],
        ):
            return  # a torchrun rank other than 0: rank 0 writes the outputs
    if not sweep:
        int8 = None
        if options["quantize"] == "int8":
            from ..quantize import add_int8

            int8 = add_int8(
                results[0], options["data"], eval_data=options["eval_data"], batch_size=batch_size
            )
        save_with_int8(results[0], int8, outputs[0], reports[0] if reports else None, force)
        _say_removed(results[0].report)
        return
    rows = [sweep_row(r.report) for r in results]
    title = f"ODF2NNA sweep of {Path(model).name}"
    with rollback_on_error([*outputs, *reports]):
        for result, path in zip(results, outputs):
            save_model(result.model, path, force=force)
        write_sweep(rows, table, title, {"reports": [r.report for r in results]}, force=force)
    click.echo(to_markdown(rows, title))
    progress.info(f"wrote {len(outputs)} models and {table} (+ .md, .png)")


def _from_dataset(train: str, test: str, epsilons: list[float], options: dict) -> None:
    from ..io import save_model
    from ..methods.odf2nna_dataset import default_prefix, odf2nna_from_dataset
    from ..sweep_table import sweep_paths, to_markdown, write_sweep

    force = options["force"]
    if options["finetune_data"] or options["data"] or options["eval_data"]:
        raise ParameterError("--data, --eval and --finetune are for MODEL; Algorithm 1 uses --test")
    prefix = output_prefix(options["output"], default_prefix(train))
    original_path = Path(f"{prefix}.original.onnx")
    pruned_paths = [Path(f"{prefix}.pruned-{eps_tag(e)}.onnx") for e in epsilons]
    refined_paths = [Path(f"{prefix}.refined-{eps_tag(e)}.onnx") for e in epsilons]
    table = Path(options["report_path"] or f"{prefix}.report.json")
    check_suffix(table, ".json", "--report")
    paths = [original_path, *pruned_paths, *refined_paths, *sweep_paths(table)]
    for source in (train, test):
        check_outputs(paths, force, source)
    result = odf2nna_from_dataset(
        train,
        test,
        epsilons,
        layers=options["layers"],
        units=options["units"],
        epochs=options["epochs"] or 200,
        task=None if options["task"] == "auto" else options["task"],
        activation=options["activation"],
        lr=options["lr"],
        batch_size=options["batch_size"] or 32,
        patience=options["patience"] or None,
        refine_fraction=options["refine_fraction"],
        seed=options["seed"],
        device=options["device"],
        verbose=not progress.is_quiet(),
    )
    rows = result.report["rows_by_epsilon"]
    title = f"ODF2NNA on {Path(train).name} ({result.report['task']})"
    context = {k: v for k, v in result.report.items() if k != "rows_by_epsilon"}
    context["reports"] = [run.report for run in result.runs]
    with rollback_on_error(paths):
        save_model(result.original, original_path, force=force)
        for run, pruned_path, refined_path in zip(result.runs, pruned_paths, refined_paths):
            save_model(run.pruned, pruned_path, force=force)
            save_model(run.refined, refined_path, force=force)
        write_sweep(rows, table, title, context, force=force)
    click.echo(to_markdown(rows, title))
    progress.info(f"wrote {original_path}, {2 * len(result.runs)} pruned/refined models, {table}")


def _say_removed(report: dict) -> None:
    for entry in report.get("layers_removed", []):
        progress.info(
            f"removed hidden layer(s) {', '.join(entry['layers'])}: bridged by a least-squares "
            f"Gemm '{entry['bridge']}' (fit R^2 {entry['fit_r2']:.4f})"
        )
