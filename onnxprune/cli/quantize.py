"""`onnxprune quantize`, and the `--quantize int8` pieces every pruning command shares.

A pruning command adds ``@quantize_option``, checks ``int8_path(output)`` with its other
outputs before any work, calls ``onnxprune.quantize.add_int8`` on its result and writes
with ``save_with_int8``: the float model, the INT8 model and the report, or none of them.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import progress
from . import main
from .common import (
    FILE,
    batch_size_option,
    check_outputs,
    check_suffix,
    data_options,
    default_output,
    force_option,
    handle_errors,
    output_options,
    rollback_on_error,
)

quantize_option = click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Also write a static INT8 (QDQ, per-channel) copy calibrated on --data, "
    "as <output>.int8.onnx, and compare both in the report.",
)


def int8_path(output: Path) -> Path:
    """Where the INT8 copy of ``output`` goes: ``small.onnx`` -> ``small.int8.onnx``."""
    return output.with_name(f"{output.stem}.int8.onnx")


def save_with_int8(result, int8_model, output: Path, report: Path | None, force: bool) -> None:
    """Write the INT8 model, then the float model and report; on failure remove them all."""
    from ..api_io import save_outputs
    from ..io import save_model

    markdown = None if report is None else report.with_suffix(".md")
    paths = [output, report, markdown, None if int8_model is None else int8_path(output)]
    with rollback_on_error(paths):
        if int8_model is not None:
            save_model(int8_model, int8_path(output), force=force)
            result.report["int8_output"] = str(int8_path(output))
        save_outputs(result, output, report, force)
    if int8_model is not None:
        progress.info(f"wrote {int8_path(output)} (INT8)")


@main.command(
    epilog="""\b
Examples:
  onnxprune quantize small.onnx --data dvar.npz
  onnxprune quantize small.onnx --data dvar.npz --eval test.npz -o small.int8.onnx
  onnxprune quantize model.onnx --data dvar.npz --calibration-samples 256 --report q.json
"""
)
@click.argument("model", type=FILE)
@data_options(
    "Calibration samples (.npz with x/X, or .npy): the same D_var as for pruning.",
    "Labelled data (.npz with x and y): accuracy / MSE of both models.",
    data_required=True,
)
@output_options("INT8 model path [default: <model>.int8.onnx beside the input].")
@click.option(
    "--calibration-samples",
    type=int,
    default=None,
    help="Calibrate on the first N samples only [default: all of --data].",
)
@click.option(
    "--preprocess/--no-preprocess",
    default=True,
    show_default=True,
    help="Run onnxruntime's quant_pre_process (shape inference, graph optimisation) first.",
)
@batch_size_option
@force_option
@handle_errors
def quantize(
    model: str,
    data: str,
    eval_data: str | None,
    output: str | None,
    report_path: str | None,
    calibration_samples: int | None,
    preprocess: bool,
    batch_size: int,
    force: bool,
) -> None:
    """Quantize MODEL to static INT8 (QDQ, per-channel weights), calibrated on --data.

    Input and output names stay the same; the report compares file size, parameters,
    FLOPs, onnxruntime latency and (with --eval) accuracy of the original and INT8 models.
    """
    from ..quantize import quantize as run_quantize

    output = Path(output) if output else default_output(model, "int8")
    report = Path(report_path) if report_path else None
    check_suffix(output, ".onnx", "the output model")
    check_suffix(report, ".json", "the report (a Markdown copy goes beside it)")
    check_outputs([output, report], force, model)
    result = run_quantize(
        model,
        data,
        eval_data=eval_data,
        batch_size=batch_size,
        calibration_samples=calibration_samples,
        preprocess=preprocess,
    )
    save_with_int8(result, None, output, report, force)
