"""`onnxprune inspect`: channel groups, prunability and cost, before pruning."""

from __future__ import annotations

import json

import click

from . import main
from .common import handle_errors


@main.command(
    epilog="""\b
Examples:
  onnxprune inspect model.onnx
  onnxprune inspect model.onnx --data dvar.npz --json
"""
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="Sample data (needed when the model input has dynamic spatial sizes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@handle_errors
def inspect(model, data, as_json) -> None:
    """Show MODEL's channel groups: sizes, what can be pruned and why not, params, FLOPs."""
    from ..inspection import inspect as run_inspect
    from ..inspection import print_inspection

    info = run_inspect(model, data)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_inspection(info)
