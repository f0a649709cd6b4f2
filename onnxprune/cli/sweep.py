"""`onnxprune sweep METHOD`: one observation pass, many settings, a table and a plot.

A group, so each method adds its own subcommand (``sweep ocnna`` here; ``sweep odf2nna``
can join with epsilons).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import progress
from . import main
from .common import (
    check_outputs,
    check_suffix,
    default_output,
    handle_errors,
    k_tag,
    rollback_on_error,
)


@main.group(
    epilog="""\b
Examples:
  onnxprune sweep ocnna model.onnx --k 10,20,30,40,50,60,75 --data dvar.npz --eval test.npz
"""
)
def sweep() -> None:
    """Prune at many settings from one observation pass: table (JSON, Markdown) and plot."""


def table_paths(report: Path) -> tuple[Path, Path, Path]:
    """``sweep.json`` -> the JSON, the Markdown and the PNG beside it."""
    return report, report.with_suffix(".md"), report.with_suffix(".png")


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
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--k",
    "ks",
    default="10,20,30,40,50,60,75",
    show_default=True,
    help="Comma-separated percentiles of significance, each 0 <= k < 100.",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="D_var samples (.npz with x/X, or .npy), observed once for every k.",
)
@click.option(
    "--eval",
    "eval_data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labelled data (.npz with x and y): accuracy / MSE at every k.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Table path (.json; .md and .png go beside it) [default: <model>.ocnna-sweep.json].",
)
@click.option("--save-models", is_flag=True, help="Also write the pruned model of every k.")
@click.option(
    "--criterion",
    default="ocnna",
    show_default=True,
    type=click.Choice(["ocnna", "l1", "random", "apoz"]),
    help="Importance criterion (baselines share groups and selection).",
)
@click.option("--convs-only", is_flag=True, help="Prune conv filters only, keep dense units.")
@click.option("--round-to", type=int, default=1, show_default=True)
@click.option("--compensate/--no-compensate", default=True, show_default=True)
@click.option("--reconstruct", is_flag=True, help="Refit layers that lost inputs (least squares).")
@click.option(
    "--finetune",
    "finetune_data",
    type=click.Path(dir_okay=False),
    help="Labelled training data: also fine-tune every pruned model (PyTorch).",
)
@click.option("--epochs", type=int, default=1, show_default=True, help="Fine-tune epochs.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Fine-tune learning rate.")
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Also quantize every pruned model to INT8 and report its accuracy.",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@handle_errors
def sweep_ocnna(
    model,
    ks,
    data,
    eval_data,
    report_path,
    save_models,
    criterion,
    convs_only,
    round_to,
    compensate,
    reconstruct,
    finetune_data,
    epochs,
    lr,
    quantize,
    batch_size,
    device,
    seed,
    force,
) -> None:
    """OCNNA at every k from one scoring pass (the paper's Figure 3 study)."""
    from ..io import atomic_write_bytes, save_model
    from ..plots import require_matplotlib, sensitivity_png
    from ..sweep import parse_values, sweep_ocnna, to_markdown

    values = parse_values(ks)
    require_matplotlib()  # before the work, not after it
    if report_path:
        report = Path(report_path)
    else:
        report = default_output(model, "ocnna-sweep").with_suffix(".json")
    check_suffix(report, ".json", "the sweep table (.md and .png go beside it)")
    models = []  # beside the table
    if save_models:
        models = [report.with_name(f"{Path(model).stem}.ocnna-{k_tag(k)}.onnx") for k in values]
    outputs = [*table_paths(report), *models]
    check_outputs(outputs, force, model)
    result = sweep_ocnna(
        model,
        values,
        data,
        eval_data=eval_data,
        criterion=criterion,
        convs_only=convs_only,
        round_to=round_to,
        compensate=compensate,
        reconstruct=reconstruct,
        batch_size=batch_size,
        device=device,
        seed=seed,
        finetune_data=finetune_data,
        epochs=epochs,
        lr=lr,
        quantize=quantize == "int8",
        keep_models=save_models,
    )
    json_path, md_path, png_path = table_paths(report)
    markdown = to_markdown(result.report)
    png = sensitivity_png(result.report)
    with rollback_on_error(outputs):
        for path, k in zip(models, values):
            save_model(result.models[k], path, force=force)
        atomic_write_bytes(json_path, json.dumps(result.report, indent=2).encode(), force=force)
        atomic_write_bytes(md_path, markdown.encode(), force=force)
        atomic_write_bytes(png_path, png, force=force)
    if not progress.is_quiet():
        click.echo(markdown)
    progress.info(f"wrote {json_path}, {md_path.name}, {png_path.name}" + _models_note(models))


def _models_note(models: list[Path]) -> str:
    return f" and {len(models)} models" if models else ""
