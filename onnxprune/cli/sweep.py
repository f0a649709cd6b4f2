"""`onnxprune sweep METHOD`: one observation pass, many settings, a table and a plot.

A group, so each method adds its own subcommand: ``sweep ocnna`` (k) and ``sweep odf2nna``
(epsilon). Both write the same kind of table (JSON, Markdown, terminal) and plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from .. import progress
from . import main
from .common import (
    FILE,
    check_outputs,
    check_suffix,
    data_options,
    default_output,
    eps_tag,
    handle_errors,
    k_tag,
    ocnna_options,
    options,
    output_options,
    output_prefix,
    rollback_on_error,
    run_options,
)


@main.group(
    epilog="""\b
Examples:
  onnxprune sweep ocnna model.onnx --k 10,20,30,40,50,60,75 --data dvar.npz --eval test.npz
  onnxprune sweep odf2nna mlp.onnx --epsilon 0.002,0.01,0.05,0.1 --data eval.npz --eval test.npz
"""
)
def sweep() -> None:
    """Prune at many settings from one observation pass: table (JSON, Markdown) and plot."""


def table_paths(report: Path) -> tuple[Path, Path, Path]:
    """``sweep.json`` -> the JSON, the Markdown and the PNG beside it."""
    return report, report.with_suffix(".md"), report.with_suffix(".png")


def sweep_options(parameter: str) -> Callable:
    """What every sweep adds per value: saved models, a fine-tune, an INT8 copy."""
    return options(
        click.option(
            "--save-models", is_flag=True, help=f"Also write the pruned model of every {parameter}."
        ),
        click.option(
            "--finetune",
            "finetune_data",
            type=FILE,
            help="Labelled training data: also fine-tune every pruned model (PyTorch).",
        ),
        click.option("--epochs", type=int, default=1, show_default=True, help="Fine-tune epochs."),
        click.option(
            "--lr", type=float, default=1e-3, show_default=True, help="Fine-tune learning rate."
        ),
        click.option(
            "--quantize",
            type=click.Choice(["int8"]),
            default=None,
            help="Also quantize every pruned model to INT8 and report its accuracy.",
        ),
    )


def _start(table: Path, models: list[Path], force: bool, model: str) -> list[Path]:
    """Refuse before any work: matplotlib missing, a bad table name, outputs in the way."""
    from ..plots import require_matplotlib

    require_matplotlib()  # before the work, not after it
    check_suffix(table, ".json", "the sweep table (.md and .png go beside it)")
    outputs = [*table_paths(table), *models]
    check_outputs(outputs, force, model)
    return outputs


def _write(result, table: Path, models: dict[Path, float], force: bool) -> None:
    """The table (JSON, Markdown, PNG) and the models, all of them or none; then say so."""
    from ..io import atomic_write_bytes, save_model
    from ..plots import sensitivity_png
    from ..sweep_table import sensitivity_markdown

    json_path, md_path, png_path = table_paths(table)
    markdown = sensitivity_markdown(result.report)
    png = sensitivity_png(result.report)
    with rollback_on_error([*table_paths(table), *models]):
        for path, value in models.items():
            save_model(result.models[value], path, force=force)
        atomic_write_bytes(json_path, json.dumps(result.report, indent=2).encode(), force=force)
        atomic_write_bytes(md_path, markdown.encode(), force=force)
        atomic_write_bytes(png_path, png, force=force)
    if not progress.is_quiet():
        click.echo(markdown)
    note = f" and {len(models)} models" if models else ""
    progress.info(f"wrote {json_path}, {md_path.name}, {png_path.name}{note}")


@sweep.command(
    "ocnna",
    epilog="""\b
Examples:
  onnxprune sweep ocnna model.onnx --k 10,20,30,40,50,60,75 --data dvar.npz --eval test.npz
  onnxprune sweep ocnna model.onnx --k 20,40,60 --data dvar.npz --eval test.npz \\
      --finetune train.npz --epochs 1 --report out/sweep.json --save-models
\b
Writes <model>.ocnna-sweep.json (+ .md table, + .png plot of accuracy and
remaining-parameter ratio against k); --save-models adds <model>.ocnna-k<k>.onnx.
""",
)
@click.argument("model", type=FILE)
@click.option(
    "--k",
    "ks",
    default="10,20,30,40,50,60,75",
    show_default=True,
    help="Comma-separated percentiles of significance, each 0 <= k < 100.",
)
@data_options(
    "D_var samples (.npz with x/X, or .npy), observed once for every k.",
    "Labelled data (.npz with x and y): accuracy / MSE at every k.",
    eval_required=True,
)
@output_options(
    None, "Table path (.json; .md and .png go beside it) [default: <model>.ocnna-sweep.json]."
)
@sweep_options("k")
@ocnna_options
@run_options
@handle_errors
def sweep_ocnna(model: str, ks: str, report_path: str | None, **kwargs) -> None:
    """OCNNA at every k from one scoring pass (the paper's Figure 3 study)."""
    from ..sweep import parse_values, sweep_ocnna

    values = parse_values(ks)
    save_models, force = kwargs.pop("save_models"), kwargs.pop("force")
    if report_path:
        table = Path(report_path)
    else:
        table = default_output(model, "ocnna-sweep").with_suffix(".json")
    models = {}  # beside the table
    if save_models:
        models = {table.with_name(f"{Path(model).stem}.ocnna-{k_tag(k)}.onnx"): k for k in values}
    _start(table, list(models), force, model)
    kwargs["quantize"] = kwargs["quantize"] == "int8"
    result = sweep_ocnna(model, values, kwargs.pop("data"), keep_models=save_models, **kwargs)
    _write(result, table, models, force)


@sweep.command(
    "odf2nna",
    epilog="""\b
Examples:
  onnxprune sweep odf2nna mlp.onnx --epsilon 0.002,0.01,0.05,0.1 --data eval.npz --eval test.npz
  onnxprune sweep odf2nna mlp.onnx --epsilon 0:0.2:0.05 --data eval.npz --eval test.npz \\
      -o out/mlp --save-models
\b
Writes <prefix>-sweep.json (+ .md table, + .png plot of accuracy or MSE and
remaining-parameter ratio against epsilon, log scale); --save-models adds
<prefix>-e<epsilon>.onnx, the same models as `onnxprune odf2nna --epsilon`.
The prefix is -o (a directory: <dir>/<model>.odf2nna) [default: <model>.odf2nna].
""",
)
@click.argument("model", type=FILE)
@click.option(
    "--epsilon",
    "epsilons",
    default="0.002,0.01,0.05,0.1",
    show_default=True,
    help="Comma-separated thresholds on each unit's output std, each >= 0 "
    "(start:stop:step ranges too).",
)
@data_options(
    "Samples to measure every unit's output std (.npz with x/X, or .npy), observed once.",
    "Labelled data (.npz with x and y): accuracy (int y) or MSE (float y) at every epsilon.",
    eval_required=True,
)
@output_options(
    "Output prefix (path/stem) of the table and the models [default: <model>.odf2nna].",
    "Table path (.json; .md and .png go beside it) [default: <prefix>-sweep.json].",
    prefix=True,
)
@sweep_options("epsilon")
@click.option("--no-bridge", is_flag=True, help="Keep one unit instead of removing a layer.")
@run_options
@handle_errors
def sweep_odf2nna(
    model: str, epsilons: str, output: str | None, report_path: str | None, **kwargs
) -> None:
    """ODF2NNA at every epsilon from one observation pass (accuracy/MSE and size)."""
    from ..select import check_epsilon
    from ..sweep import parse_values, sweep_odf2nna

    values = parse_values(epsilons, check_epsilon, what="epsilon", example="0.002,0.01,0.1")
    save_models, force = kwargs.pop("save_models"), kwargs.pop("force")
    prefix = output_prefix(output, str(default_output(model, "odf2nna"))[: -len(".onnx")])
    table = Path(report_path or f"{prefix}-sweep.json")
    models = {Path(f"{prefix}-{eps_tag(e)}.onnx"): e for e in values} if save_models else {}
    _start(table, list(models), force, model)
    kwargs["quantize"] = kwargs["quantize"] == "int8"
    kwargs["bridge"] = not kwargs.pop("no_bridge")
    result = sweep_odf2nna(model, values, kwargs.pop("data"), keep_models=save_models, **kwargs)
    _write(result, table, models, force)
